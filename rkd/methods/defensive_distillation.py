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

import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from rkd.config.numbers import Number
from rkd.losses import soft_cross_entropy
from rkd.methods.base import Method, StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.teacher import DistillationConfig, frozen_teacher


class DefensiveDistillationMethod(DistillationConfig):
    """Papernot et al. (2016): a student trained at temperature T on the soft labels of a
    teacher trained at the same T; tested at T = 1."""

    name: Literal["defensive_distillation"]
    temperature: Annotated[Number, Field(gt=0)] = 20.0
    init: Literal["teacher", "scratch"] = "scratch"

    def check_models(self, cfg, models) -> None:
        teacher = models.get("teacher")
        t_teacher = getattr(teacher.method, "temperature", 1.0) if teacher is not None else self.temperature
        if t_teacher != self.temperature:
            warnings.warn(f"defensive distillation at T={self.temperature:g} from a teacher trained at "
                          f"T={t_teacher:g}; Papernot et al. use the same T for both", stacklevel=2)


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


register_method(MethodSpec(
    config=DefensiveDistillationMethod,
    build=lambda cfg, model, models, seed: DefensiveDistillation(model, frozen_teacher(cfg, model, models),
                                                                 temperature=cfg.temperature)))
