"""Robust accuracy: clean accuracy, a grid of attacks, and a PGD step-count sweep.

Every attack runs on the model in eval mode (restored afterwards), on the same deterministic
test subset, with the torch RNG seeded per attack so random starts are reproducible.

Robust accuracy counts a sample only if the model classifies it correctly both clean and
attacked (the AutoAttack / RobustBench convention). An attack's last iterate can land on a
correctly classified point for a sample that was wrong to begin with (common with FGSM on
robust models); counting those would report robust accuracy above clean accuracy.

All attacks here are white-box against the evaluated model (protocol ``white-box``); other
protocols (e.g. MACD's transfer protocol) add entries with their own ``protocol`` label.

Two optional extras evaluate defensive distillation the way its papers did and the way its
critics did: the targeted JSMA success rate (``eval.jsma``), with the saliency map taken from the
softmax probabilities (the 2016 papers) and/or from the logits (Carlini & Wagner), and the size
of the input gradient of the cross-entropy at T = 1 (``eval.input_gradient``), whose vanishing
(saturated softmax) is what makes gradient-based attacks on a distilled network fail.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rkd.attacks import build_attack, default_step_size, pgd
from rkd.attacks.jsma import jsma_success_rate
from rkd.config.numbers import format_eps
from rkd.config.schema import AttackConfig, EvalConfig
from rkd.data.loader import make_loader
from rkd.evaluation.masking_checks import flagged, masking_checks
from rkd.evaluation.per_sample import correct_mask, input_gradient_norms, robust_mask
from rkd.evaluation.subsets import eval_subset
from rkd.evaluation.worst_case import (
    grid_threats,
    headline_threat,
    is_gradient_free,
    run_cascade,
    suite_name,
    worst_case_entry,
)
from rkd.models.inference import inference_copy
from rkd.models.modes import evaluation_mode

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(model: nn.Module, loader: DataLoader, device, attack: AttackFn | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``loader``; with ``attack``, the fraction
    of samples classified correctly both clean and on ``attack(model, x, y)``."""
    mask = correct_mask(model, loader, device, attack)
    return mask.float().mean().item() if mask.numel() else 0.0


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
    """One ``attacks[]`` entry of results.json (see rkd.evaluation.results for the schema). CW is
    unbounded: its entry has no norm or eps (its distortion is added by :func:`evaluate`)."""
    bounded = cfg.threat is not None
    return {
        "name": cfg.label, "kind": cfg.kind, "norm": cfg.norm if bounded else None, "eps": cfg.eps if bounded else None,
        "eps_label": format_eps(cfg.eps, cfg.norm) if bounded else None,
        "steps": 1 if cfg.kind == "fgsm" else cfg.steps,
        "step_size": resolved_step_size(cfg), "restarts": cfg.restarts if cfg.kind == "pgd" else None,
        "protocol": protocol, "source_model": source, "accuracy": acc, "wall_time_s": seconds,
        "params": params if params is not None else cfg.attack_params(),
    }


def evaluate(model: nn.Module, test_set: Dataset, cfg: EvalConfig, *, device, batch_size: int = 256,
             source: nn.Module | None = None, source_label: str | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Run the clean + attack grid + optional step sweep, JSMA and input-gradient statistics,
    and (``cfg.transfer``) the transfer protocol against ``source``; returns the results dict body.
    ``log`` gets one line as each part ends (what ran, its figure, its seconds) and
    ``eval: evaluating <attack> ...`` before each attack (grid, worst-case cascade, transfer, JSMA
    saliency) and each optional part, so a long evaluation is never silent for more than one attack."""
    if cfg.transfer is not None and source is None:
        raise ValueError("eval.transfer needs the source model")
    data = eval_subset(test_set, cfg.max_samples)
    loader = make_loader(data, batch_size)
    t_start = time.perf_counter()
    model = _for_attacks(model, loader, device)
    if source is not None:
        source = _for_attacks(source, loader, device)
    lap = _Lap(log)
    out: dict = {"num_samples": len(data)}
    clean_ok = correct_mask(model, loader, device)
    out["clean_accuracy"] = clean_ok.float().mean().item()
    entries, masks = [], {}
    for a in cfg.attacks:
        lap.evaluating(a.label)
        torch.manual_seed(cfg.seed)
        fn = build_attack(a.kind, **attack_params(a, test_set))
        t0 = time.perf_counter()
        dists: list | None = [] if a.kind == "cw" else None
        masks[a.label] = robust_mask(model, data, clean_ok, fn, device=device, batch_size=batch_size,
                                     distortions=dists)
        entries.append(attack_entry(a, masks[a.label].float().mean().item(), time.perf_counter() - t0,
                                    params=fn.describe()))
        if dists is not None:  # CW is unbounded: its accuracy means something only with its distortion
            d = torch.cat(dists) if dists else torch.zeros(0)
            entries[-1]["median_l2_distortion"] = d.median().item() if d.numel() else None
    lap(f"clean {out['clean_accuracy']:.1%}, {len(entries)} grid attacks")
    worst, worst_masks = worst_case(model, data, cfg, clean_ok, masks, device=device, batch_size=batch_size,
                                    announce=lap.evaluating)
    lap("worst case " + ", ".join(f"{w['norm']} {w['eps_label']} {w['accuracy']:.1%}" for w in worst))
    if cfg.transfer is not None:
        entries += transfer_entries(model, data, cfg, source=source, source_label=source_label, device=device,
                                    batch_size=batch_size, announce=lap.evaluating)
        lap(f"transfer protocol against {source_label}")
    out["attacks"] = entries
    out["worst_case"] = worst
    out["headline"] = headline_of(worst)
    _optional_parts(out, model, data, loader, cfg, device=device, batch_size=batch_size,
                    num_classes=_num_classes(test_set) if cfg.jsma else 0, announce=lap.evaluating)
    if cfg.step_sweep or cfg.jsma or cfg.input_gradient:
        lap("step sweep, JSMA, input gradients (as configured)")
    if cfg.checks.enabled:
        lap.evaluating(f"masking checks (probes on up to {cfg.checks.max_samples} images)")
        out["checks"] = masking_checks(model, data, out, cfg.checks, worst_masks=worst_masks, clean_ok=clean_ok,
                                       device=device, batch_size=batch_size,
                                       num_classes=_classes_of(model, data, device), seed=cfg.seed)
        out["flags"] = flagged(out["checks"])
        lap(f"masking checks: {', '.join(out['flags']) or 'none flagged'}")
    else:
        out["checks"], out["flags"] = None, None
    out["eval_wall_time_s"] = time.perf_counter() - t_start
    return out


def _for_attacks(model: nn.Module, loader: DataLoader, device) -> nn.Module:
    """The frozen copy every attack here runs on, batch norms folded (:mod:`rkd.models.inference`)."""
    probe = next(iter(loader))[0][:64].to(device)
    return inference_copy(model, probe)


def _optional_parts(out: dict, model: nn.Module, data: Dataset, loader: DataLoader, cfg: EvalConfig, *, device,
                    batch_size: int, num_classes: int, announce: Callable[[str], None]) -> None:
    """The step sweep, JSMA and input-gradient statistics into ``out`` (None where not configured)."""
    out["step_sweep"] = out["jsma"] = out["input_gradient"] = None
    if cfg.step_sweep:
        sw = cfg.step_sweep
        announce(f"PGD step sweep {sw.norm} {format_eps(sw.eps, sw.norm)} (steps {', '.join(map(str, sw.steps))})")
        out["step_sweep"] = step_sweep(model, loader, cfg, device)
    if cfg.jsma:
        out["jsma"] = jsma_eval(model, data, cfg, device, num_classes, batch_size, announce=announce)
    if cfg.input_gradient:
        announce("input gradients")
        out["input_gradient"] = input_gradient_stats(model, loader, device)


class _Lap:
    """Calls ``log`` with a line and the seconds since the previous line (no-op without ``log``);
    :meth:`evaluating` says what starts now."""

    def __init__(self, log: Callable[[str], None] | None):
        self.log, self.t = log, time.perf_counter()

    def __call__(self, text: str) -> None:
        now = time.perf_counter()
        if self.log is not None:
            self.log(f"eval: {text} ({now - self.t:.0f} s)")
        self.t = now

    def evaluating(self, what: str) -> None:
        """``eval: evaluating <what> ...`` (the lap's clock runs on)."""
        if self.log is not None:
            self.log(f"eval: evaluating {what} ...")


def worst_case(model: nn.Module, data: Dataset, cfg: EvalConfig, clean_ok: torch.Tensor,
               masks: dict[str, torch.Tensor], *, device, batch_size: int,
               announce: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """One ``worst_case[]`` entry per threat (see rkd.evaluation.worst_case) and, by threat, the
    per-sample masks of the gradient-based attacks' worst case (what the masking checks compare
    gradient-free attacks with). Gradient-based attacks (grid, then the suite's cascade) come
    before the gradient-free ones (Square); the final worst case does not depend on the order.
    ``announce`` gets a line before each cascade attack that runs."""
    if not cfg.worst_case.enabled:
        return [], {}
    entries, gradient_masks = [], {}
    cascade_mask = partial(robust_mask, device=device, batch_size=batch_size)

    def before(a: AttackConfig, points: int) -> None:
        if announce is not None:
            announce(f"{a.label} (worst-case cascade, {points} of {len(clean_ok)} points still robust)")

    for threat in grid_threats(cfg):
        t0 = time.perf_counter()
        grid = [a for a in cfg.attacks if a.threat == threat]
        suite = [(a, build_attack(a.kind, **attack_params(a, data))) for a in cfg.worst_case.suite_attacks(*threat)]
        robust, cascade = clean_ok.clone(), []
        for gradient_free in (False, True):
            for a in grid:
                if is_gradient_free(a) == gradient_free:
                    robust &= masks[a.label]
            stage = [(a, fn) for a, fn in suite if is_gradient_free(a) == gradient_free]
            robust, records = run_cascade(model, data, robust, stage, seed=cfg.seed, robust_mask=cascade_mask,
                                          before=before)
            cascade += records
            if not gradient_free:
                gradient_masks[threat] = robust.clone()
        counted = [a.label for a in grid] + [a.label for a, _ in suite]
        entries.append(worst_case_entry(threat, robust, counted, suite_name(cfg), cascade, time.perf_counter() - t0))
    return entries, gradient_masks


def headline_of(worst: list[dict]) -> dict | None:
    """The headline figure: the worst case at the largest Linf ball (else the first threat)."""
    threat = headline_threat([(w["norm"], w["eps"]) for w in worst])
    if threat is None:
        return None
    w = next(w for w in worst if (w["norm"], w["eps"]) == threat)
    return {"norm": w["norm"], "eps": w["eps"], "eps_label": w["eps_label"], "accuracy": w["accuracy"],
            "suite": w["suite"]}


def transfer_entries(model: nn.Module, data: Dataset, cfg: EvalConfig, *, source: nn.Module, source_label: str | None,
                     device, batch_size: int = 256, announce: Callable[[str], None] | None = None) -> list[dict]:
    """MACD's published protocol (``protocol: transfer``): each attack of ``cfg.transfer`` runs
    against ``source`` (in eval mode), and ``model`` classifies the examples. Accuracy counts a
    sample when ``model`` is right on both the clean image and the source's adversarial example
    (the convention of the white-box entries). The source's examples go through the on-disk
    adversarial cache (``cfg.transfer.cache_dir``, keyed by the source's weights, the attack,
    the data and the seed), so every model evaluated against one source sees identical examples
    and they are computed once. ``announce`` gets a line before each attack."""
    from rkd.adversarial_cache import cached_attack_set

    tc = cfg.transfer
    clean_loader = make_loader(data, batch_size)
    entries = []
    with evaluation_mode(model):
        with torch.no_grad():
            clean_ok = torch.cat([(model(x.to(device)).argmax(1) == y.to(device)).cpu() for x, y in clean_loader])
        for a in tc.attacks:
            if announce is not None:
                announce(f"{a.label} (transfer from {source_label or 'the source model'})")
            params = attack_params(a, data)
            t0 = time.perf_counter()
            adv, labels = cached_attack_set(tc.cache_dir, source, data, a.kind, params, cfg.seed,
                                            batch_size=batch_size, device=device)
            ok = []
            with torch.no_grad():
                for i in range(0, adv.shape[0], batch_size):
                    xa, ya = adv[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
                    ok.append((model(xa).argmax(1) == ya).cpu())
            acc = (torch.cat(ok) & clean_ok).float().mean().item()
            entries.append(attack_entry(a, acc, time.perf_counter() - t0, protocol="transfer", source=source_label,
                                        params={"attack": a.kind, **params}))
            note = small_l2_budget_note(a, adv[0].numel())
            if note:
                entries[-1]["note"] = note
    return entries


def small_l2_budget_note(a: AttackConfig, dim: int) -> str | None:
    """A note for an L2 radius given in Linf-style units (MACD's AutoAttack-L2 at 8/255): the
    Linf ball of the same eps reaches ``eps * sqrt(dim)`` in L2, far beyond the L2 ball."""
    if a.norm != "l2" or a.eps >= 0.1:
        return None
    reach = a.eps * math.sqrt(dim)
    return (f"L2 radius {a.eps:.4f} (the paper's setting): the Linf ball of the same eps reaches L2 {reach:.2f} on "
            f"{dim} input values, {reach / a.eps:.0f}x this budget; not comparable with an Linf figure")


def attack_params(a: AttackConfig, dataset) -> dict:
    """``build_attack`` keyword arguments of ``a`` on ``dataset`` (AutoAttack also needs the
    number of classes)."""
    params = a.attack_params()
    if a.kind in ("autoattack", "fab"):
        params["n_classes"] = _num_classes(dataset)
    return params


def _classes_of(model: nn.Module, data: Dataset, device) -> int:
    """The dataset's number of classes, else the width of the model's output."""
    n = getattr(data, "num_classes", None)
    if n is not None:
        return int(n)
    with evaluation_mode(model), torch.no_grad():
        return int(model(data[0][0].unsqueeze(0).to(device)).shape[1])


def _num_classes(dataset) -> int:
    n = getattr(dataset, "num_classes", None)
    if n is None:
        raise ValueError("autoattack and JSMA need the number of classes: evaluate a dataset with .num_classes")
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


def jsma_eval(model: nn.Module, data: Dataset, cfg: EvalConfig, device, num_classes: int,
              batch_size: int = 256, announce: Callable[[str], None] | None = None) -> list[dict]:
    """Targeted JSMA success rate, one ``jsma[]`` entry per saliency in ``cfg.jsma.saliency``.

    The attacked samples are those among the first ``cfg.jsma.max_samples`` of ``data`` that the
    model classifies correctly (a wrong sample already "succeeds" for some targets, which would
    inflate the rate); every saliency attacks the same samples with the same targets.
    ``announce`` gets a line before each saliency.
    """
    jc = cfg.jsma
    with evaluation_mode(model):
        xs, ys = [], []
        for x, y in make_loader(eval_subset(data, jc.max_samples), batch_size):
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            xs.append(x[ok])
            ys.append(y[ok])
        x, y = torch.cat(xs), torch.cat(ys)
        entries = []
        for saliency in jc.saliency:
            if announce is not None:
                announce(f"JSMA ({saliency} saliency, {int(x.shape[0])} images)")
            t0 = time.perf_counter()
            rate, details = jsma_success_rate(model, x, y, num_classes, targets=jc.targets, seed=cfg.seed,
                                              return_details=True, theta=jc.theta, gamma=jc.gamma,
                                              use_logits=saliency == "logits")
            num_pairs = len(details["success"]) if details else 0
            frac = details.get("mean_changed_fraction_successful", math.nan)
            entries.append({
                "saliency": saliency, "success_rate": rate if num_pairs else None, "targets": jc.targets,
                "num_samples": int(x.shape[0]), "num_pairs": num_pairs, "theta": jc.theta, "gamma": jc.gamma,
                "mean_changed_fraction": None if math.isnan(frac) else frac,  # NaN: no successful pair
                "wall_time_s": time.perf_counter() - t0,
            })
    return entries


def input_gradient_stats(model: nn.Module, loader: DataLoader, device) -> dict:
    """Mean L2 / L1 / Linf norm of ``d CE(model(x), y) / dx`` per sample (model in eval mode, its
    logits as returned, i.e. T = 1), the median L2 norm, and the fraction of samples whose
    gradient is exactly zero.

    A defensively distilled network evaluated at T = 1 has a saturated softmax: the gradient
    shrinks (or underflows to exactly zero) on confidently classified samples, while on the
    misclassified ones its large logits make it larger than a standard network's; the mean is
    dominated by the latter, so the median is reported too. The loss is summed over the
    batch so each sample's gradient is that of its own loss; norms are accumulated in float64.
    Parameter ``.grad`` is untouched (``torch.autograd.grad``).
    """
    norms = input_gradient_norms(model, loader, device)
    n = int(norms["l2"].numel())
    if n == 0:
        return {"l2_mean": 0.0, "l2_median": 0.0, "l1_mean": 0.0, "linf_mean": 0.0, "zero_fraction": 0.0,
                "num_samples": 0}
    return {"l2_mean": norms["l2"].mean().item(), "l2_median": norms["l2"].median().item(),
            "l1_mean": norms["l1"].mean().item(), "linf_mean": norms["linf"].mean().item(),
            "zero_fraction": (norms["linf"] == 0).double().mean().item(), "num_samples": n}
