"""MTARD (Zhao et al. 2022, "Enhanced accuracy and robustness via multi-teacher adversarial
distillation"), as in the authors' code (zhaoshiji123/MTARD): two frozen teachers, an
adversarially trained one (``teacher``) and a clean-trained one (``clean_teacher``)::

    L = w_adv * KL(T_adv(x') || S(x')) + w_nat * KL(T_nat(x) || S(x)),     w_adv = 1 - w_nat

The weights adapt every step, before the backward pass, from each loss's progress relative to
its value on the first batch (``L_0``)::

    r = (L / L_0)^beta,     w_nat <- w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))

so the term that has fallen least gets more weight; ``w_nat`` starts at 0.5, ``eta`` = 0.025
decays with the learning rate (the authors multiply it by 0.1 at each LR milestone; here it is
scaled by the epoch's LR over the configured one, which is the same for a step schedule). The
weights and ``L_0`` are buffers, so they are checkpointed and a resumed run continues them (in
multi-GPU training each rank adapts its own from its own losses). Inner attack: PGD-10 on the
student's CE from ``x + 0.001 * N(0, 1)``, student in eval mode. KL at tau = 1 (the authors
average it over batch and classes, ``class_mean``; rkd's default is ``batchmean``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from rkd.config.numbers import Number
from rkd.config.schema import TeacherConfig
from rkd.methods.base import StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.robust_distillation import (
    GaussianStartAttackConfig,
    RobustDistillation,
    RobustDistillationConfig,
    frozen_role,
)
from rkd.methods.teacher import frozen_teacher


class MtardMethod(RobustDistillationConfig):
    """MTARD: a robust and a clean teacher, their KL terms weighted adaptively."""

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("teacher", "clean_teacher")
    name: Literal["mtard"]
    teacher: TeacherConfig = Field(description="the adversarially trained teacher (sees x')")
    clean_teacher: TeacherConfig = Field(description="the clean-trained teacher (sees x)")
    weight_rate: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.025, description="eta of the weight update (scaled by the LR schedule)")
    weight_beta: Annotated[Number, Field(ge=0)] = Field(1.0, description="beta of r = (L / L_0)^beta")
    initial_clean_weight: Annotated[Number, Field(ge=0, le=1)] = Field(0.5, description="w_nat at the start")
    attack: GaussianStartAttackConfig = Field(default_factory=GaussianStartAttackConfig)


class Mtard(RobustDistillation):
    name = "mtard"
    frozen = ("teacher", "clean_teacher")

    def __init__(self, model, teacher, clean_teacher, *, weight_rate: float = 0.025, weight_beta: float = 1.0,
                 initial_clean_weight: float = 0.5, **kw):
        super().__init__(model, teacher, **kw)
        self.clean_teacher = clean_teacher
        self.weight_rate, self.weight_beta = float(weight_rate), float(weight_beta)
        self.register_buffer("clean_weight", torch.tensor(float(initial_clean_weight)))
        self.register_buffer("initial_losses", torch.full((2,), float("nan")))  # L_0 of (adv, clean)
        self.lr_scale = 1.0

    def on_epoch_start(self, epoch: int, lr_scale: float) -> None:
        self.lr_scale = lr_scale

    @torch.no_grad()
    def update_weights(self, losses: torch.Tensor) -> None:
        """One step of the rule above; ``losses`` = (L_adv, L_nat), detached."""
        self.initial_losses.copy_(torch.where(self.initial_losses.isnan(), losses, self.initial_losses))
        r = (losses / self.initial_losses).pow(self.weight_beta)
        target = r[1] / r.sum()
        self.clean_weight.sub_(self.weight_rate * self.lr_scale * (self.clean_weight - target))

    def training_step(self, x, y) -> StepOutput:
        x_adv = self.inner_attack(x, y, "ce")
        logits_adv, logits = self.model(x_adv), self.model(x)
        kl_adv = self.kl(logits_adv, self.teacher_logits(x_adv))
        kl_clean = self.kl(logits, self.teacher_logits(x, self.clean_teacher))
        if self.training:
            self.update_weights(torch.stack([kl_adv.detach(), kl_clean.detach()]).float())
        w_nat = self.clean_weight.detach()
        loss = (1 - w_nat) * kl_adv + w_nat * kl_clean
        return StepOutput(loss=loss, terms={"kl_adv": kl_adv, "kl_clean": kl_clean, "clean_weight": w_nat},
                          logits=logits_adv)


register_method(MethodSpec(config=MtardMethod, build=lambda cfg, model, models, seed: Mtard(
    model, frozen_teacher(cfg, model, models), frozen_role(models, "clean_teacher", cfg.name),
    weight_rate=cfg.weight_rate, weight_beta=cfg.weight_beta, initial_clean_weight=cfg.initial_clean_weight,
    attack=cfg.attack, kl_reduction=cfg.kl_reduction)))
