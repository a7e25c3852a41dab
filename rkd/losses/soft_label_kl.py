"""KL divergence to a teacher's soft labels, the loss of the adversarial robustness
distillation family (ARD, RSLAD, IAD, MTARD, AdaAD; PAPERS.md section 4).

    KL(softmax(z_t / tau) || softmax(z_s / tau)) = sum_k p_t,k (log p_t,k - log p_s,k)

per example, reduced over the batch in one of two ways, because the authors' code differs here
and the choice changes the loss's scale:

``batchmean``
    summed over classes, averaged over the batch: the KL divergence of each example, the same
    whatever the number of classes (IAD's code; AdaAD's on CIFAR-100).
``class_mean``
    averaged over batch *and* classes, i.e. ``batchmean / K``: PyTorch's ``nn.KLDivLoss()``
    default (``reduction="mean"``), which ARD's, RSLAD's, MTARD's and AdaAD's CIFAR-10 code
    use. RSLAD's and MTARD's CIFAR-100 scripts multiply it by 10 to undo the extra 1/100.
``none``
    the per-example KL, ``(N,)`` (IAD weights each example).

Hinton et al.'s ``tau^2`` factor (which keeps the gradient's scale when tau changes) is the
caller's choice (``tau_squared``): ARD multiplies by it, the others run at tau = 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KL_REDUCTIONS = ("batchmean", "class_mean", "none")
KlReduction = Literal["batchmean", "class_mean", "none"]


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float = 1.0,
                  reduction: KlReduction = "batchmean", tau_squared: bool = False,
                  detach_target: bool = True) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at temperature ``tau``. ``student_logits`` and
    ``teacher_logits`` are ``(N, K)``; the target side is detached unless ``detach_target`` is
    False (IAD's introspection term, whose target is the student's own clean output)."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"need (N, K) logits of one shape: student {tuple(student_logits.shape)}, "
                         f"teacher {tuple(teacher_logits.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax((teacher_logits.detach() if detach_target else teacher_logits) / tau, dim=1)
    per_example = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    if tau_squared:
        per_example = per_example * tau * tau
    if reduction == "none":
        return per_example
    if reduction == "batchmean":
        return per_example.mean()
    if reduction == "class_mean":
        return per_example.mean() / student_logits.shape[1]
    raise ValueError(f"unknown KL reduction {reduction!r}; one of {', '.join(KL_REDUCTIONS)}")
