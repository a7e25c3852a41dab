"""RSLAD (Zi et al. 2021, "Revisiting adversarial robustness distillation: robust soft labels
make student better"), as in the authors' code (zibojia/RSLAD): no hard labels at all::

    L = 5/6 * KL(T(x) || S(x')) + 1/6 * KL(T(x) || S(x))

The teacher's soft labels of the clean image are the targets of both terms and of the inner
attack, which maximises KL(T(x) || S(x')) from ``x + 0.001 * N(0, 1)``, the student in eval
mode (Linf 8/255, 10 steps of 2/255). tau = 1. The authors' code averages the KL over batch and classes (``kl_reduction:
class_mean``; their CIFAR-100 script multiplies it by 10); rkd's default is ``batchmean``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rkd.config.numbers import Number
from rkd.methods.base import StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.robust_distillation import GaussianStartAttackConfig, RobustDistillation, RobustDistillationConfig
from rkd.methods.teacher import frozen_teacher


class RsladMethod(RobustDistillationConfig):
    """RSLAD: adv_weight * KL(T(x) || S(x')) + (1 - adv_weight) * KL(T(x) || S(x)); the attack
    maximises the first KL."""

    name: Literal["rslad"]
    adv_weight: Annotated[Number, Field(ge=0, le=1)] = Field(
        5 / 6, description="weight of the adversarial KL term; 1 - adv_weight on the clean one")
    attack: GaussianStartAttackConfig = Field(default_factory=GaussianStartAttackConfig)


class Rslad(RobustDistillation):
    name = "rslad"

    def __init__(self, model, teacher, *, adv_weight: float = 5 / 6, **kw):
        super().__init__(model, teacher, **kw)
        self.adv_weight = float(adv_weight)

    def training_step(self, x, y) -> StepOutput:
        soft_labels = self.teacher_logits(x)
        x_adv = self.inner_attack(x, y, "kl_clean_teacher", teacher_logits=soft_labels)
        logits_adv = self.model(x_adv)
        kl_adv = self.kl(logits_adv, soft_labels)
        kl_clean = self.kl(self.model(x), soft_labels)
        loss = self.adv_weight * kl_adv + (1 - self.adv_weight) * kl_clean
        return StepOutput(loss=loss, terms={"kl_adv": kl_adv, "kl_clean": kl_clean}, logits=logits_adv)


register_method(MethodSpec(config=RsladMethod, build=lambda cfg, model, models, seed: Rslad(
    model, frozen_teacher(cfg, model, models), adv_weight=cfg.adv_weight, attack=cfg.attack,
    kl_reduction=cfg.kl_reduction)))
