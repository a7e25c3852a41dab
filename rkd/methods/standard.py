"""Standard training: cross-entropy on clean images."""

from __future__ import annotations

import torch.nn.functional as F

from rkd.methods.base import Method, StepOutput


class StandardTraining(Method):
    name = "standard"

    def training_step(self, x, y) -> StepOutput:
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        return StepOutput(loss=ce, terms={"ce": ce}, logits=logits)
