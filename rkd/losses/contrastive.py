"""MACD's robustness loss (Zhang & Dong 2024, eq. 5): the student's backbone features are pulled
towards the MAE teacher's features on two terms,

    L_robust = KL(softmax(T / tau) || softmax(S / tau)) + || S/||S|| - T/||T|| ||_2^2

with ``S`` the student's pooled backbone features and ``T`` the teacher's (already projected to
the same dimension), both ``(N, D)``; each term is averaged over the batch. The paper writes
"KL(S_out, T_out)" without saying which way or how features become distributions: here the
teacher's softmax over the feature axis is the target (the teacher is fixed) and ``tau``
(default 1) is a documented option. The teacher's features are detached. The normalised-L2 term
equals ``2 - 2 cos(S, T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``mean_n KL(softmax(T_n / tau) || softmax(S_n / tau))`` over the feature axis."""
    _check(student, teacher)
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return F.kl_div(F.log_softmax(student / tau, dim=1), F.log_softmax(teacher.detach() / tau, dim=1),
                    reduction="batchmean", log_target=True)


def normalized_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_n || S_n/||S_n|| - T_n/||T_n|| ||^2`` (in [0, 4])."""
    _check(student, teacher)
    return (F.normalize(student, dim=1) - F.normalize(teacher.detach(), dim=1)).pow(2).sum(dim=1).mean()


def macd_robust_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> tuple[torch.Tensor, dict]:
    """``(KL + normalised L2, {"kl": ..., "nl2": ...})``."""
    kl, nl2 = feature_kl(student, teacher, tau), normalized_l2(student, teacher)
    return kl + nl2, {"kl": kl, "nl2": nl2}


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"need (N, D) features of the same shape: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)} (project the teacher's features to the student's D)")
