"""Defensive distillation (Papernot et al. 2016).

1. A teacher is trained at temperature T: ``method: {name: standard, temperature: T}``.
2. Its soft labels ``softmax(z_t / T)`` are the student's targets.
3. The student (same architecture) is trained at the same T on those soft labels
   (:func:`rkd.losses.soft_cross_entropy`); soft labels are computed on the fly from the frozen
   teacher on each (augmented) batch rather than stored once, which is the same function of
   the images.
4. At test time the student's logits are used as they are, i.e. at T = 1: ``forward`` returns
   ``z``, so every evaluation and attack sees the T = 1 network.
"""

from __future__ import annotations

import torch
from torch import nn

from rkd.losses import soft_cross_entropy
from rkd.methods.base import Method, StepOutput


class DefensiveDistillation(Method):
    name = "defensive_distillation"
    frozen = ("teacher",)

    def __init__(self, model: nn.Module, teacher: nn.Module, *, temperature: float = 20.0):
        super().__init__(model)
        self.teacher = teacher
        self.temperature = float(temperature)

    def training_step(self, x, y) -> StepOutput:
        logits = self.model(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss = soft_cross_entropy(logits, teacher_logits, self.temperature)
        return StepOutput(loss=loss, terms={"soft_ce": loss}, logits=logits.detach())
