"""The headline robust accuracy: per threat model, the per-example worst case over attacks.

A sample counts as robust in the ``(norm, eps)`` ball only if the model classifies it correctly
clean *and* under every white-box attack that ran in that ball: the grid's own columns (FGSM,
PGD-7, ...) and the worst-case suite (by default the reference AutoAttack set: APGD-CE,
APGD-T, FAB-T, Square-5000). The suite runs as a cascade, the AutoAttack way: each attack only
on the points every earlier attack left robust, so a suite costs little more than its first
attack where the grid already broke most points, and the result is exactly what running every
attack on every point would give (an attack's outcome on one point does not depend on the
others: every attack here treats samples independently).

``worst_case[]`` entries of results.json::

    {"norm", "eps", "eps_label", "accuracy", "num_samples", "suite": "autoattack"|"fast"|"custom",
     "attacks": [every attack counted, grid first], "cascade": [{"name", "kind", "params",
     "ran_on": points attacked, "robust_after": accuracy after this attack, "wall_time_s"}],
     "wall_time_s"}
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from rkd.config.numbers import format_eps
from rkd.config.schema import AttackConfig, EvalConfig

Threat = tuple[str, float]


def grid_threats(cfg: EvalConfig) -> list[Threat]:
    """The threats whose worst case is reported: ``eval.worst_case.threats``, or every ball of
    the white-box grid in first-seen order."""
    if cfg.worst_case.threats is not None:
        return [(t.norm, float(t.eps)) for t in cfg.worst_case.threats]
    out: list[Threat] = []
    for a in cfg.attacks:
        if a.threat is not None and a.threat not in out:
            out.append(a.threat)
    return out


def headline_threat(threats: list[Threat]) -> Threat | None:
    """The threat of the headline figure: the largest Linf ball, else the first one."""
    linf = [t for t in threats if t[0] == "linf"]
    return max(linf, key=lambda t: t[1]) if linf else (threats[0] if threats else None)


def is_gradient_free(a: AttackConfig) -> bool:
    """Square queries scores only; every other kind follows the model's gradient."""
    return a.kind == "square"


def suite_name(cfg: EvalConfig) -> str:
    return cfg.worst_case.suite if isinstance(cfg.worst_case.suite, str) else "custom"


def run_cascade(model: nn.Module, data: Dataset, robust: torch.Tensor, attacks: list[tuple[AttackConfig, object]], *,
                seed: int, robust_mask,
                before: Callable[[AttackConfig, int], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Run ``attacks`` (``(config, built attack)`` pairs) in order, each on the points of
    ``robust`` still robust; returns the updated mask and one cascade record per attack.
    ``robust_mask(model, data, only, attack)`` attacks the points of ``only``; ``before(config,
    points)`` is called before each attack that runs (one with no point left does not)."""
    records = []
    for a, fn in attacks:
        t0 = time.perf_counter()
        ran_on = int(robust.sum())
        if ran_on:
            if before is not None:
                before(a, ran_on)
            torch.manual_seed(seed)
            robust = robust_mask(model, data, robust, fn)
        records.append({"name": a.label, "kind": a.kind, "params": fn.describe(), "ran_on": ran_on,
                        "robust_after": robust.float().mean().item(), "wall_time_s": time.perf_counter() - t0})
    return robust, records


def worst_case_entry(threat: Threat, robust: torch.Tensor, counted: list[str], suite: str, cascade: list[dict],
                     seconds: float) -> dict:
    norm, eps = threat
    return {"norm": norm, "eps": eps, "eps_label": format_eps(eps, norm), "accuracy": robust.float().mean().item(),
            "num_samples": int(robust.numel()), "suite": suite, "attacks": counted, "cascade": cascade,
            "wall_time_s": seconds}
