"""Robust accuracy: clean accuracy, a grid of attacks, and a PGD step-count sweep.

Every attack runs on the model in eval mode (restored afterwards), on the same deterministic
test subset, with the torch RNG seeded per attack so random starts are reproducible.

Robust accuracy counts a sample only if the model classifies it correctly both clean and
attacked (the AutoAttack / RobustBench convention). An attack's last iterate can land on a
correctly classified point for a sample that was wrong to begin with (common with FGSM on
robust models); counting those would report robust accuracy above clean accuracy.

All attacks here are white-box against the evaluated model (protocol ``white-box``); other
protocols (e.g. MACD's transfer protocol) add entries with their own ``protocol`` label.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rkd.attacks import build_attack, default_step_size, pgd
from rkd.config.numbers import format_eps
from rkd.config.schema import AttackConfig, EvalConfig
from rkd.data.loader import make_loader

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def eval_subset(dataset: Dataset, max_samples: int | None) -> Dataset:
    """The first ``max_samples`` items (deterministic), or the whole set; never augmented."""
    if hasattr(dataset, "with_transform"):
        dataset = dataset.with_transform(None)
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if hasattr(dataset, "subset"):
        return dataset.subset(range(max_samples))
    return Subset(dataset, range(max_samples))


def accuracy(model: nn.Module, loader: DataLoader, device, attack: AttackFn | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``loader``; with ``attack``, the fraction
    of samples classified correctly both clean and on ``attack(model, x, y)``."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    total = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            if attack is not None:
                x_adv = attack(model, x, y)
                with torch.no_grad():
                    ok &= model(x_adv).argmax(1) == y
            correct += ok.sum()
            total += y.shape[0]
    finally:
        model.train(was_training)
    return correct.item() / max(total, 1)


def resolved_step_size(a: AttackConfig) -> float | None:
    """The step size the attack actually uses (None where the notion does not apply)."""
    if a.kind == "fgsm":
        return a.eps
    if a.kind == "mifgsm":
        return a.eps / a.steps if a.steps else None
    if a.kind in ("pgd", "jitter"):
        return a.step_size if a.step_size is not None else default_step_size(a.norm, a.eps, a.steps)
    return None


def attack_entry(cfg: AttackConfig, acc: float, seconds: float, protocol: str = "white-box",
                 source: str | None = None, params: dict | None = None) -> dict:
    """One ``attacks[]`` entry of results.json (see rkd.evaluation.results for the schema)."""
    return {
        "name": cfg.label, "kind": cfg.kind, "norm": cfg.norm, "eps": cfg.eps,
        "eps_label": format_eps(cfg.eps, cfg.norm),
        "steps": 1 if cfg.kind == "fgsm" else (None if cfg.kind in ("autoattack", "square") else cfg.steps),
        "step_size": resolved_step_size(cfg), "restarts": cfg.restarts if cfg.kind == "pgd" else None,
        "protocol": protocol, "source_model": source, "accuracy": acc, "wall_time_s": seconds,
        "params": params if params is not None else cfg.attack_params(),
    }


def evaluate(model: nn.Module, test_set: Dataset, cfg: EvalConfig, *, device, batch_size: int = 256) -> dict:
    """Run the clean + attack grid + optional step sweep; returns the results dict body."""
    data = eval_subset(test_set, cfg.max_samples)
    loader = make_loader(data, batch_size)
    t_start = time.perf_counter()
    out: dict = {"num_samples": len(data)}
    out["clean_accuracy"] = accuracy(model, loader, device)
    entries = []
    for a in cfg.attacks:
        torch.manual_seed(cfg.seed)
        params = a.attack_params()
        if a.kind == "autoattack":
            params["n_classes"] = _num_classes(test_set)
        fn = build_attack(a.kind, **params)
        t0 = time.perf_counter()
        acc = accuracy(model, loader, device, fn)
        entries.append(attack_entry(a, acc, time.perf_counter() - t0, params=fn.describe()))
    out["attacks"] = entries
    out["step_sweep"] = step_sweep(model, loader, cfg, device) if cfg.step_sweep else None
    out["eval_wall_time_s"] = time.perf_counter() - t_start
    return out


def _num_classes(dataset) -> int:
    n = getattr(dataset, "num_classes", None)
    if n is None:
        raise ValueError("autoattack needs the number of classes: evaluate a dataset with .num_classes")
    return int(n)


def step_sweep(model: nn.Module, loader: DataLoader, cfg: EvalConfig, device) -> dict:
    """PGD accuracy against the number of steps (0 = clean), Robust-KD Figures 4-5."""
    sw = cfg.step_sweep
    points = []
    for k in sw.steps:
        torch.manual_seed(cfg.seed)
        size = sw.step_size if sw.step_size is not None else (default_step_size(sw.norm, sw.eps, k) if k else None)

        def fn(m, x, y, k=k, size=size):
            return pgd(m, x, y, norm=sw.norm, eps=sw.eps, steps=k, step_size=size) if k else x

        t0 = time.perf_counter()
        acc = accuracy(model, loader, device, fn)
        points.append({"steps": k, "step_size": size, "accuracy": acc, "wall_time_s": time.perf_counter() - t0})
    return {"norm": sw.norm, "eps": sw.eps, "eps_label": format_eps(sw.eps, sw.norm), "points": points}
