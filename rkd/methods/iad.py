"""IAD-I (Zhu et al. 2022, "Reliable adversarial distillation with unreliable teachers"), on
top of ARD, as in the authors' code (ZFancy/IAD, ``IAD-I.py``). Per example a reliability
weight, the teacher's probability of the true class on the student's adversarial example::

    w = P_T(y | x')^beta                                  (detached)

and, from ``start_epoch`` on, an introspection term that pulls the student's adversarial
output towards its own clean one where the teacher is unreliable::

    L = alpha * tau^2 * KL(T(x) || S(x')) + alpha * mean_i (1 - w_i) KL(S(x_i) || S(x'_i))
        + (1 - alpha) * CE(S(x), y)

Before ``start_epoch`` it is ARD. As in the code (and unlike the paper's formula): the teacher
term is not weighted by ``w`` (IAD-II does that), the introspection target ``S(x)`` is not
detached, and each KL is the per-example KL averaged over the batch (``batchmean``). Inner
attack as ARD's (PGD-10 on the student's CE, uniform start, train mode). Defaults: tau = 1,
alpha = 1, beta = 0.1, start epoch 60 of the authors' 200.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rkd.config.numbers import Number
from rkd.methods.base import StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.robust_distillation import DistillAttackConfig, RobustDistillation, RobustDistillationConfig
from rkd.methods.teacher import frozen_teacher


class IadMethod(RobustDistillationConfig):
    """IAD-I: ARD plus an introspection term weighted by 1 - P_T(y | x')^beta, from start_epoch."""

    name: Literal["iad"]
    tau: Annotated[Number, Field(gt=0)] = Field(1.0, description="temperature of the teacher KL term")
    alpha: Annotated[Number, Field(ge=0, le=1)] = Field(1.0, description="weight of the KL terms; 1 - alpha on CE")
    beta: Annotated[Number, Field(ge=0)] = Field(0.1, description="reliability w = P_T(y | x')^beta")
    start_epoch: Annotated[int, Field(ge=0)] = Field(
        60, description="first epoch (0-based) with the introspection term; ARD before it")
    attack: DistillAttackConfig = Field(default_factory=DistillAttackConfig)

    def check(self, cfg) -> None:
        if self.start_epoch >= cfg.train.epochs:
            raise ValueError(f"method.start_epoch {self.start_epoch} >= train.epochs {cfg.train.epochs}: IAD's "
                             "introspection term would never run (the authors start it at 60 of 200 epochs)")


def reliability(teacher_logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``P_T(y | x')^beta`` per example, detached."""
    return F.softmax(teacher_logits_adv.detach(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


class Iad(RobustDistillation):
    name = "iad"

    def __init__(self, model, teacher, *, tau: float = 1.0, alpha: float = 1.0, beta: float = 0.1,
                 start_epoch: int = 60, **kw):
        super().__init__(model, teacher, **kw)
        self.tau, self.alpha, self.beta, self.start_epoch = float(tau), float(alpha), float(beta), int(start_epoch)
        self.epoch = 0

    def on_epoch_start(self, epoch: int, lr_scale: float) -> None:
        self.epoch = epoch

    def training_step(self, x, y) -> StepOutput:
        x_adv = self.inner_attack(x, y, "ce")
        logits_adv = self.model(x_adv)
        kd = self.kl(logits_adv, self.teacher_logits(x), tau=self.tau, tau_squared=True)
        terms = {"kl_teacher": kd}
        loss = self.alpha * kd
        needs_clean = self.epoch >= self.start_epoch or self.alpha < 1
        logits = self.model(x) if needs_clean else None
        if self.epoch >= self.start_epoch:
            w = reliability(self.teacher_logits(x_adv), y, self.beta)
            intro = (self.kl(logits_adv, logits, reduction="none", detach_target=False) * (1 - w)).mean()
            if self.kl_reduction == "class_mean":
                intro = intro / logits.shape[1]
            terms.update(kl_introspection=intro, reliability=w.mean())
            loss = loss + self.alpha * intro
        if self.alpha < 1:
            terms["ce"] = F.cross_entropy(logits, y)
            loss = loss + (1 - self.alpha) * terms["ce"]
        return StepOutput(loss=loss, terms=terms, logits=logits_adv)


register_method(MethodSpec(config=IadMethod, build=lambda cfg, model, models, seed: Iad(
    model, frozen_teacher(cfg, model, models), tau=cfg.tau, alpha=cfg.alpha, beta=cfg.beta,
    start_epoch=cfg.start_epoch, attack=cfg.attack, kl_reduction=cfg.kl_reduction)))
