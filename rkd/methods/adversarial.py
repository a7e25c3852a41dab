"""Adversarial training (Madry et al. 2018): minimise CE on PGD examples.

The inner maximisation is the shared :func:`rkd.attacks.pgd` loop with the threat model of
``method.attack`` (Linf 8/255 PGD-7 by default; the Robust-KD teachers use L2 0.5). The model
mode during the attack is a config choice (``attack.mode``, default ``train`` as in Madry's and
Rice et al.'s code); the update itself is always in train mode.
"""

from __future__ import annotations

import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.methods.base import Method, StepOutput, model_mode


class AdversarialTraining(Method):
    name = "adversarial"

    def __init__(self, model, *, norm="linf", eps=8 / 255, steps=7, step_size=None,
                 random_start=True, mode="train"):
        super().__init__(model)
        self.attack = dict(norm=norm, eps=eps, steps=steps, step_size=step_size, random_start=random_start)
        self.attack_in_train_mode = mode == "train"

    def training_step(self, x, y) -> StepOutput:
        with model_mode(self.model, self.attack_in_train_mode and self.training):
            x_adv = pgd(self.model, x, y, **self.attack)
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return StepOutput(loss=ce, terms={"ce_adv": ce}, logits=logits)
