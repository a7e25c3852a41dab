"""MACD's robustness loss (Zhang & Dong 2024, eq. 5): the student's backbone features are pulled
towards the MAE teacher's features on two terms,

    L_robust = KL(softmax(T / tau) || softmax(S / tau)) + || S/||S|| - T/||T|| ||_2^2

with ``S`` the student's features and ``T`` the teacher's (already in the same dimension), both
``(N, D)``; each term is averaged over the batch. The teacher's features are detached. The
normalised-L2 term equals ``2 - 2 cos(S, T)``.

The paper writes "KL(S_out, T_out)" without saying which argument is the target or how features
become distributions (softmax over the feature axis at temperature ``tau`` here). ``direction``
chooses: ``"teacher_target"`` (default) is ``KL(P_T || P_S)``, the distillation convention
(the fixed teacher's distribution is the target and the student is penalised where the teacher
has mass); ``"student_target"`` is ``KL(P_S || P_T)``, the reverse (mode-seeking) one, which is
how ``KL(S_out, T_out)`` reads as a mathematical expression.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KlDirection = Literal["teacher_target", "student_target"]
KL_DIRECTIONS = ("teacher_target", "student_target")


def feature_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0,
               direction: KlDirection = "teacher_target") -> torch.Tensor:
    """``mean_n KL(P_T || P_S)`` (``teacher_target``) or ``mean_n KL(P_S || P_T)``
    (``student_target``), ``P = softmax(features / tau)`` over the feature axis."""
    _check(student, teacher)
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    log_s = F.log_softmax(student / tau, dim=1)
    log_t = F.log_softmax(teacher.detach() / tau, dim=1)
    if direction == "teacher_target":
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return F.kl_div(log_t, log_s, reduction="batchmean", log_target=True)


def normalized_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_n || S_n/||S_n|| - T_n/||T_n|| ||^2`` (in [0, 4])."""
    _check(student, teacher)
    return (F.normalize(student, dim=1) - F.normalize(teacher.detach(), dim=1)).pow(2).sum(dim=1).mean()


def macd_robust_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0,
                     direction: KlDirection = "teacher_target") -> tuple[torch.Tensor, dict]:
    """``(KL + normalised L2, {"kl": ..., "nl2": ...})``."""
    kl, nl2 = feature_kl(student, teacher, tau, direction), normalized_l2(student, teacher)
    return kl + nl2, {"kl": kl, "nl2": nl2}


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"need (N, D) features of the same shape: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)} (project the teacher's features to the student's D)")
