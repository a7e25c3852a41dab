"""Adversarial training (Madry et al. 2018): minimise CE on PGD examples.

The inner maximisation is the shared :func:`rkd.attacks.pgd` loop with the threat model of
``method.attack`` (:class:`rkd.config.schema.TrainAttackConfig`: Linf 8/255 PGD-7 by default;
the Robust-KD teachers use L2 0.5). The model mode during the attack is ``attack.mode``
(default ``train``, as in Madry's and Rice et al.'s code); the update is always in train mode.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from rkd.attacks import pgd
from rkd.config.methods import MethodConfig
from rkd.config.schema import TrainAttackConfig
from rkd.methods.base import Method, StepOutput, attack_mode
from rkd.methods.registry import MethodSpec, register_method


class AdversarialMethod(MethodConfig):
    """Madry et al. PGD adversarial training: CE on the PGD examples."""

    name: Literal["adversarial"]
    attack: TrainAttackConfig = Field(default_factory=TrainAttackConfig)


def pgd_examples(model, x, y, a: TrainAttackConfig, training: bool):
    """PGD examples of ``(x, y)`` for the attack config ``a``, the model in train mode when
    ``a.mode`` is ``train`` and the caller is training (restored afterwards; fp32)."""
    with attack_mode(model, a.mode == "train" and training):
        return pgd(model, x, y, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.step_size,
                   random_start=a.random_start)


class AdversarialTraining(Method):
    name = "adversarial"

    def __init__(self, model, attack: TrainAttackConfig | None = None):
        super().__init__(model)
        self.attack = attack or TrainAttackConfig()

    def training_step(self, x, y) -> StepOutput:
        x_adv = pgd_examples(self.model, x, y, self.attack, self.training)
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return StepOutput(loss=ce, terms={"ce_adv": ce}, logits=logits)


register_method(MethodSpec(config=AdversarialMethod,
                           build=lambda cfg, model, models, seed: AdversarialTraining(model, cfg.attack)))
