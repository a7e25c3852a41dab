"""Training methods, one file each; :func:`build_method` maps a method config to one."""

from __future__ import annotations

from torch import nn

from rkd.methods.adversarial import AdversarialTraining
from rkd.methods.base import Method, StepOutput, attack_mode, freeze
from rkd.methods.standard import StandardTraining
from rkd.methods.trades import Trades


def build_method(cfg, model: nn.Module) -> Method:
    """Build the method described by ``cfg`` (a ``method`` section of the config schema)."""
    if cfg.name == "standard":
        return StandardTraining(model)
    if cfg.name == "adversarial":
        return AdversarialTraining(model, cfg.attack)
    if cfg.name == "trades":
        return Trades(model, beta=cfg.beta, attack=cfg.attack)
    raise ValueError(f"unknown method {cfg.name!r}")


__all__ = ["AdversarialTraining", "Method", "StandardTraining", "StepOutput", "Trades",
           "attack_mode", "build_method", "freeze"]
