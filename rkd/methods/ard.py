"""ARD (Goldblum et al. 2020, "Adversarially robust distillation"), as in the authors' code
(goldblum/AdversariallyRobustDistillation, ``main.py``)::

    L = alpha * tau^2 * KL(T(x)/tau || S(x')/tau) + (1 - alpha) * CE(S(x), y)

The teacher sees the *clean* image, the student its own adversarial example ``x'``: PGD-10 on
the student's cross-entropy from a uniform random start, the student in train mode (Linf 8/255,
step 2/255). Defaults: tau = 30, alpha = 1 (no CE term), the authors' code averages the KL over
batch and classes (``nn.KLDivLoss()``'s default: ``kl_reduction: class_mean``; rkd's default is
``batchmean``, see :mod:`rkd.methods.robust_distillation`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field

from rkd.config.numbers import Number
from rkd.methods.base import StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.robust_distillation import DistillAttackConfig, RobustDistillation, RobustDistillationConfig
from rkd.methods.teacher import frozen_teacher


class ArdMethod(RobustDistillationConfig):
    """ARD: alpha * tau^2 * KL(T(x) || S(x')) + (1 - alpha) * CE(S(x), y), PGD on the student's CE."""

    name: Literal["ard"]
    tau: Annotated[Number, Field(gt=0)] = Field(30.0, description="softmax temperature of both sides")
    alpha: Annotated[Number, Field(ge=0, le=1)] = Field(
        1.0, description="weight of the KL term; 1 - alpha on CE(S(x), y)")
    tau_squared: bool = Field(True, description="multiply the KL by tau^2 (Hinton et al.; the authors' code)")
    attack: DistillAttackConfig = Field(default_factory=DistillAttackConfig)


class Ard(RobustDistillation):
    name = "ard"

    def __init__(self, model, teacher, *, tau: float = 30.0, alpha: float = 1.0, tau_squared: bool = True, **kw):
        super().__init__(model, teacher, **kw)
        self.tau, self.alpha, self.tau_squared = float(tau), float(alpha), tau_squared

    def training_step(self, x, y) -> StepOutput:
        x_adv = self.inner_attack(x, y, "ce")
        logits_adv = self.model(x_adv)
        teacher_logits = self.teacher_logits(x)
        kl = self.kl(logits_adv, teacher_logits, tau=self.tau, tau_squared=self.tau_squared)
        terms = {"kl_adv": kl}
        loss = self.alpha * kl
        if self.alpha < 1:
            terms["ce"] = F.cross_entropy(self.model(x), y)
            loss = loss + (1 - self.alpha) * terms["ce"]
        return StepOutput(loss=loss, terms=terms, logits=logits_adv)


register_method(MethodSpec(config=ArdMethod, build=lambda cfg, model, models, seed: Ard(
    model, frozen_teacher(cfg, model, models), tau=cfg.tau, alpha=cfg.alpha, tau_squared=cfg.tau_squared,
    attack=cfg.attack, kl_reduction=cfg.kl_reduction)))
