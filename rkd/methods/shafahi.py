"""Shafahi et al. (2019), "Adversarially robust transfer learning", as the Robust-KD paper's
baseline: the student is trained on clean data with

    L = CE(student(x), y) + lam * || GAP(f_last^S(x)) - GAP(f_last^T(x)) ||_2^2

(:func:`rkd.losses.gap_l2_loss`), keeping its pooled last-stage features near the robust
teacher's. Only the last stage is constrained and no input gradients are needed."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rkd.config.numbers import Number
from rkd.losses import gap_l2_loss
from rkd.methods.base import Method, StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.teacher import DistillationConfig, check_stage_shapes, frozen_teacher


class ShafahiMethod(DistillationConfig):
    """Shafahi et al. (2019): CE + lam * ||GAP(f_last^S) - GAP(f_last^T)||^2 on clean data."""

    name: Literal["shafahi"]
    lam: Annotated[Number, Field(ge=0)] = 1.0


class ShafahiTransfer(Method):
    name = "shafahi"
    frozen = ("teacher",)

    def __init__(self, model: nn.Module, teacher: nn.Module, *, lam: float = 1.0):
        super().__init__(model)
        self.teacher = teacher
        self.lam = float(lam)
        check_stage_shapes(model, teacher, [model.num_stages])

    def training_step(self, x, y) -> StepOutput:
        f_s = self.model.forward_features(x)
        logits = self.model.forward_head(f_s)
        with torch.no_grad():
            f_t = self.teacher.forward_features(x)
        ce = F.cross_entropy(logits, y)
        gap = gap_l2_loss(f_s, f_t)
        return StepOutput(loss=ce + self.lam * gap, terms={"ce": ce, "gap_l2": gap}, logits=logits.detach())


register_method(MethodSpec(
    config=ShafahiMethod,
    build=lambda cfg, model, models, seed: ShafahiTransfer(model, frozen_teacher(cfg, model, models), lam=cfg.lam)))
