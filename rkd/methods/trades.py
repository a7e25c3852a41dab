"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x_adv) || f(x)).

As in the authors' code: the inner maximisation of KL starts at ``x + 0.001 * N(0, 1)`` and runs
in eval mode; the KL is summed and divided by the batch size (``batchmean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rkd.attacks import pgd
from rkd.methods.base import Method, StepOutput, model_mode


def _kl_to(p_clean: torch.Tensor):
    def loss(logits_adv: torch.Tensor, _y) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="sum")

    return loss


class Trades(Method):
    name = "trades"

    def __init__(self, model, *, beta=6.0, norm="linf", eps=8 / 255, steps=10, step_size=None,
                 random_start=True, mode="eval"):
        super().__init__(model)
        self.beta = beta
        self.attack = dict(norm=norm, eps=eps, steps=steps, step_size=step_size)
        self.random_start = random_start
        self.attack_in_train_mode = mode == "train"

    def training_step(self, x, y) -> StepOutput:
        with model_mode(self.model, self.attack_in_train_mode and self.training):
            with torch.no_grad():
                p_clean = F.softmax(self.model(x), dim=1)
            start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1) if self.random_start else x
            x_adv = pgd(self.model, x, y, **self.attack, random_start=False, x_init=start,
                        loss_fn=_kl_to(p_clean))
        logits = self.model(x)
        logits_adv = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return StepOutput(loss=ce + self.beta * kl, terms={"ce": ce, "kl": kl}, logits=logits)
