"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x_adv) || f(x)).

As in the authors' code: the inner maximisation of KL runs 10 steps of 0.007 at eps 0.031 (the
step scaled with eps), starts at ``x + 0.001 * N(0, 1)`` and runs in eval mode (``attack.mode``,
:class:`rkd.config.schema.TradesAttackConfig`); the KL of the outer loss is summed and divided
by the batch size (``batchmean``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rkd.attacks import pgd
from rkd.config.methods import MethodConfig
from rkd.config.numbers import Number
from rkd.config.schema import TradesAttackConfig
from rkd.methods.base import Method, StepOutput, attack_mode
from rkd.methods.registry import MethodSpec, register_method


class TradesMethod(MethodConfig):
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(f(x_adv) || f(x))."""

    name: Literal["trades"]
    beta: Annotated[Number, Field(ge=0)] = 6.0
    attack: TradesAttackConfig = Field(default_factory=TradesAttackConfig)


def _kl_to(p_clean: torch.Tensor):
    def loss(logits_adv: torch.Tensor, _y) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="none").sum(dim=1)

    return loss


class Trades(Method):
    name = "trades"

    def __init__(self, model, beta: float = 6.0, attack: TradesAttackConfig | None = None):
        super().__init__(model)
        self.beta = beta
        self.attack = attack or TradesAttackConfig()

    def adversarial_examples(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_{x' in ball} KL(f(x') || f(x)), from x + 0.001 * N(0, 1)."""
        a = self.attack
        with attack_mode(self.model, a.mode == "train" and self.training):
            with torch.no_grad():
                p_clean = F.softmax(self.model(x), dim=1)
            start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            return pgd(self.model, x, p_clean, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.resolved_step_size(),
                       random_start=False, x_init=start, loss_fn=_kl_to(p_clean))

    def training_step(self, x, y) -> StepOutput:
        x_adv = self.adversarial_examples(x)
        logits = self.model(x)
        logits_adv = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return StepOutput(loss=ce + self.beta * kl, terms={"ce": ce, "kl": kl}, logits=logits)


register_method(MethodSpec(config=TradesMethod,
                           build=lambda cfg, model, models, seed: Trades(model, beta=cfg.beta, attack=cfg.attack)))
