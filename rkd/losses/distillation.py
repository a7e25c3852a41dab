"""Temperature-scaled classification losses (defensive distillation, Papernot et al. 2016).

A network "trained at temperature T" uses ``softmax(z / T)`` in its training loss; at test time
the same logits ``z`` are used at ``T = 1``. Training at a high T makes the network scale its
logits up by about T, so at ``T = 1`` its softmax saturates and the input gradient of the loss
vanishes -- the effect defensive distillation relies on (and that logit-space attacks such as
Carlini-Wagner ignore).

No ``T^2`` gradient rescaling (Hinton et al.) is applied: Papernot et al. train with the plain
cross-entropy at temperature T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def temperature_cross_entropy(logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of ``softmax(logits / T)`` against hard labels (mean over the batch)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return F.cross_entropy(logits / temperature, y)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """``mean_n -sum_k softmax(z_t/T)_k * log softmax(z_s/T)_k``: the student matches the
    teacher's soft labels at temperature T (teacher logits are detached)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return -(p_t * F.log_softmax(student_logits / temperature, dim=1)).sum(dim=1).mean()
