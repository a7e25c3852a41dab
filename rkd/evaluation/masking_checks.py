"""Automatic gradient-masking checks, run on every evaluation.

A robust accuracy is only as good as the attacks behind it: a model that *masks* its gradients
(saturated softmax, non-differentiable or randomised pre-processing, shattered or vanishing
gradients) defeats gradient-based attacks without being robust, and the numbers then overstate
its robustness. Carlini et al. 2019 ("On evaluating adversarial robustness", its
recommendations and checklist), Athalye et al. 2018 ("Obfuscated gradients give a false sense of
security", §3.1, the behaviours that identify obfuscated gradients) and Croce & Hein 2020
(AutoAttack; the RobustBench flags) list the symptoms that show up in an evaluation. Each
check below looks for one of them and returns a named entry

``{"name", "status": "ok" | "flagged" | "skipped", "evidence", "description", "reference"}``

where ``evidence`` holds the numbers that decided it (and ``reason`` when skipped). A flag is a
warning next to the results: no reported number is ever changed.

Inputs (see :func:`masking_checks`): the results body of the evaluation so far (its white-box
and transfer ``attacks`` entries over the whole evaluated set, the optional ``step_sweep`` and
``input_gradient``), the per-example white-box worst case per threat model (``worst_masks``)
and the clean correctness; the probes run on the first ``max_samples`` evaluated images (the
subset), with the model in eval mode and the torch RNG seeded before each probe. A probe counts a
point robust only if the model also classifies it correctly clean. All accuracy comparisons
read an absolute difference up to ``tolerance`` as noise. The probe threat is the largest Linf
ball of the evaluation (the ``worst_masks`` keys and the white-box entries), else the first
threat.

Checks (names fixed; parameters are keys of :class:`rkd.config.schema.MaskingChecksConfig`):

``accuracy_falls_with_eps``
    Per norm and attack (same kind, steps and restarts), white-box accuracy must not rise with
    eps by more than ``tolerance`` over its value at any smaller eps; nor may the white-box
    worst case; nor, on the subset, may PGD-20 at ``large_eps`` (Linf) lie above the subset's
    white-box worst case at a smaller Linf eps. A larger ball contains the smaller one, so a
    rise means the attack found less in a larger set: its gradient is not guiding it (Carlini
    et al. 2019, checklist: a larger distortion bound must increase attack success; Athalye et
    al. 2018, §3.1).
    Parameters: ``tolerance``, ``large_eps``.

``accuracy_falls_with_steps``
    PGD accuracy at more steps must not rise above its value at fewer steps by more than
    ``tolerance``: in the grid's PGD entries of one ball, in ``step_sweep``'s points, and in a
    probe on the subset at the probe threat with the grid's PGD step counts and
    ``step_counts``. An attack that gets weaker with more iterations is not optimising the loss
    (Carlini et al. 2019, checklist: iterate to convergence; Athalye et al. 2018, §3).
    Parameters: ``step_counts``, ``tolerance``.

``iterative_beats_single_step``
    Flag when FGSM at an eps leaves fewer points robust (by more than ``tolerance``) than the
    iterative white-box attacks of the grid at that eps (the lowest of them; a subset probe of
    PGD at ``min(step_counts)`` steps when the grid has none, and a subset FGSM/PGD pair at the
    probe threat when the grid has no FGSM). An iterative attack does at least as well as one
    step of it when the loss surface is smooth; one step beating it means the iterations walk
    into a masked region (Carlini et al. 2019, checklist: iterative attacks must beat single-step
    ones; Athalye et al. 2018, §3.1).
    Parameters: ``step_counts``, ``tolerance``.

``black_box_beats_white_box``
    Square (score-based, gradient-free; ``black_box_queries`` queries, one restart) attacks the
    subset's points that the white-box worst case left robust, at the probe threat; flag when
    it breaks more than ``tolerance * m`` of them (``m`` = subset size). A gradient-free attack
    cannot beat gradient attacks on a model with informative gradients (Carlini et al. 2019,
    checklist: gradient-free attacks must not beat gradient-based ones; Athalye et al. 2018,
    §3.1; Croce & Hein 2020). Parameters: ``black_box_queries``,
    ``tolerance``.

``large_eps_reaches_chance``
    PGD-20 Linf at ``large_eps`` on the subset; flag when its accuracy exceeds
    ``1 / num_classes + chance_margin``. An unbounded-enough attack must be able to turn any
    image into any other, so accuracy must fall to chance (Carlini et al. 2019, checklist:
    unbounded attacks must reach 100% success; Athalye et al. 2018, §3.1). Parameters: ``large_eps``,
    ``chance_margin``.

``vanishing_input_gradients``
    The input gradient of the cross-entropy at T = 1 (the model's logits as returned) per subset
    sample; flag when the share whose largest component is exactly zero or below
    :data:`VANISHING_GRADIENT_LINF` (the smallest normal float32 times 2**23, ~1e-31: a gradient
    at float32's underflow, whose products with a step size flush to zero) exceeds
    ``zero_gradient_fraction``. A saturated softmax (defensive distillation evaluated at T = 1)
    leaves gradient attacks nothing to follow (Carlini & Wagner 2017; Athalye et al. 2018, §3,
    vanishing gradients; Carlini et al. 2019). Parameter:
    ``zero_gradient_fraction``.

``transfer_beats_white_box``
    Only where ``transfer`` entries exist: flag when a transfer attack's accuracy is below the
    white-box worst case in its ball (from ``worst_masks``; else the lowest white-box entry of
    that ball) by more than ``tolerance``. Examples crafted on another model should not beat
    attacks that see this model's gradients (Carlini et al. 2019, checklist: transfer attacks
    must not beat white-box ones; Athalye et al. 2018, §3.1). Skipped without transfer
    entries. Parameter: ``tolerance``.

``restarts_change_result``
    PGD at the probe threat (the grid's PGD steps there, else ``min(step_counts)``) with
    ``restarts`` random restarts against one run on the same seed (the first run is identical,
    so the extra restarts can only lower accuracy); flag when they lower it by more than
    ``tolerance``. Results that hinge on the random start point to a loss surface full of
    masked local optima (Carlini et al. 2019, checklist: use random restarts; Croce & Hein
    2020).
    Parameters: ``restarts``, ``tolerance``.

:func:`masking_checks` runs all eight; :func:`flagged` names the flagged ones. The ``check_*``
functions decide each check from its numbers alone (no model), so each can be tested on a
synthetic body. Cost on the subset (``m`` = 100 by default): about 80 PGD gradient steps plus a
Square run of up to ``black_box_queries`` forward passes over the white-box robust points.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from rkd.attacks import build_attack, pgd
from rkd.config.schema import MaskingChecksConfig
from rkd.data.loader import make_loader
from rkd.evaluation.per_sample import input_gradient_norms, robust_mask
from rkd.evaluation.subsets import eval_subset
from rkd.models.modes import evaluation_mode

__all__ = [
    "CHECK_NAMES", "LARGE_EPS_STEPS", "VANISHING_GRADIENT_LINF", "masking_checks", "flagged",
    "check_accuracy_falls_with_eps", "check_accuracy_falls_with_steps", "check_iterative_beats_single_step",
    "check_black_box_beats_white_box", "check_large_eps_reaches_chance", "check_vanishing_input_gradients",
    "check_transfer_beats_white_box", "check_restarts_change_result",
]

CHECK_NAMES = (
    "accuracy_falls_with_eps", "accuracy_falls_with_steps", "iterative_beats_single_step",
    "black_box_beats_white_box", "large_eps_reaches_chance", "vanishing_input_gradients",
    "transfer_beats_white_box", "restarts_change_result",
)

#: PGD steps of the large-eps probe.
LARGE_EPS_STEPS = 20

#: A per-sample input gradient whose largest |component| is at most this counts as vanishing:
#: 2**23 times the smallest normal float32 (~1e-31), i.e. at float32's underflow.
VANISHING_GRADIENT_LINF = torch.finfo(torch.float32).tiny / torch.finfo(torch.float32).eps

#: Gradient-based iterative attack kinds (compared with FGSM).
ITERATIVE_KINDS = ("pgd", "mifgsm", "apgd", "autoattack", "fab", "jitter")

DESCRIPTIONS = {
    "accuracy_falls_with_eps": "White-box accuracy must not rise as the threat radius eps grows.",
    "accuracy_falls_with_steps": "PGD accuracy must not rise as the number of attack steps grows.",
    "iterative_beats_single_step": "Single-step FGSM must not find lower accuracy than the iterative attacks "
                                   "at the same eps.",
    "black_box_beats_white_box": "A gradient-free attack (Square) must not break points that the white-box "
                                 "worst case left robust.",
    "large_eps_reaches_chance": "PGD at a very large Linf radius must drive accuracy down to chance.",
    "vanishing_input_gradients": "The input gradient of the cross-entropy at T=1 must not be zero or vanishing "
                                 "on many samples.",
    "transfer_beats_white_box": "Transfer attacks from another model must not find lower accuracy than the "
                                "white-box worst case in the same ball.",
    "restarts_change_result": "Extra random restarts of PGD must not lower accuracy much below one run.",
}

REFERENCES = {
    "accuracy_falls_with_eps": "Carlini et al. 2019 (checklist: a larger distortion bound must increase attack "
                               "success); Athalye et al. 2018, §3.1",
    "accuracy_falls_with_steps": "Carlini et al. 2019 (checklist: iterate attacks to convergence); "
                                 "Athalye et al. 2018, §3",
    "iterative_beats_single_step": "Carlini et al. 2019 (checklist: iterative attacks must beat single-step "
                                   "ones); Athalye et al. 2018, §3.1",
    "black_box_beats_white_box": "Carlini et al. 2019 (checklist: gradient-free attacks must not beat "
                                 "gradient-based ones); Athalye et al. 2018, §3.1; Croce & Hein 2020",
    "large_eps_reaches_chance": "Carlini et al. 2019 (checklist: unbounded attacks must reach 100% success); "
                                "Athalye et al. 2018, §3.1",
    "vanishing_input_gradients": "Athalye et al. 2018, §3 (vanishing gradients); Carlini & Wagner 2017; "
                                 "Carlini et al. 2019",
    "transfer_beats_white_box": "Carlini et al. 2019 (checklist: transfer attacks must not beat white-box "
                                "ones); Athalye et al. 2018, §3.1",
    "restarts_change_result": "Carlini et al. 2019 (checklist: use random restarts); Croce & Hein 2020",
}

Threat = tuple[str, float]


# --------------------------------------------------------------------------------- helpers
def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _jsonable(v.tolist())
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    try:
        return _jsonable(float(v))
    except (TypeError, ValueError):
        return str(v)


def _result(name: str, status: str, evidence: dict, reason: str | None = None) -> dict:
    ev = dict(evidence)
    if reason is not None:
        ev["reason"] = reason
    return {"name": name, "status": status, "evidence": _jsonable(ev), "description": DESCRIPTIONS[name],
            "reference": REFERENCES[name]}


def _skipped(name: str, reason: str, **evidence) -> dict:
    return _result(name, "skipped", evidence, reason)


def _same_eps(a, b) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _norm(n) -> str | None:
    return None if n is None else str(n).lower()


def _lookup(table: dict, norm: str, eps: float):
    for (n, e), v in table.items():
        if _norm(n) == norm and _same_eps(e, eps):
            return v
    return None


def _rises(points: Iterable[tuple[float, float]], tolerance: float) -> list[dict]:
    """For points (x, accuracy) sorted by x: every point whose accuracy exceeds the lowest
    accuracy at a smaller x by more than ``tolerance``."""
    out = []
    best: tuple[float, float] | None = None
    for x, acc in sorted(points, key=lambda p: p[0]):
        if best is not None and acc > best[1] + tolerance and x > best[0]:
            out.append({"at_low": best[0], "accuracy_low": best[1], "at_high": x, "accuracy_high": acc,
                        "rise": acc - best[1]})
        if best is None or acc < best[1]:
            best = (x, acc)
    return out


def _white_box(body: dict) -> list[dict]:
    return [a for a in (body.get("attacks") or []) if a.get("protocol", "white-box") == "white-box"]


def _transfer(body: dict) -> list[dict]:
    return [a for a in (body.get("attacks") or []) if a.get("protocol") == "transfer"]


def _entry_threat(a: dict) -> Threat | None:
    if a.get("eps") is None or a.get("norm") is None:
        return None
    return _norm(a["norm"]), float(a["eps"])


def _worst_accuracy_of(worst_masks: dict, upto: int | None = None) -> dict[Threat, float]:
    out = {}
    for (n, e), mask in worst_masks.items():
        mk = torch.as_tensor(mask).bool().cpu()
        if upto is not None:
            mk = mk[:upto]
        if mk.numel():
            out[(_norm(n), float(e))] = mk.double().mean().item()
    return out


def _probe_threat(white_box: list[dict], worst_masks: dict) -> Threat | None:
    """The largest Linf ball of the evaluation, else the first threat (worst_masks first)."""
    cands = [(_norm(n), float(e)) for n, e in worst_masks] + [t for t in map(_entry_threat, white_box) if t]
    cands = [t for t in cands if t[1] > 0]
    linf = [t for t in cands if t[0] == "linf"]
    if linf:
        return max(linf, key=lambda t: t[1])
    return cands[0] if cands else None


def _label(kind, norm, steps, restarts) -> str:
    s = f"{kind} {norm}"
    if steps is not None and kind != "fgsm":
        s += f" steps={steps}"
    if restarts not in (None, 1):
        s += f" restarts={restarts}"
    return s


# --------------------------------------------------------------- decisions from numbers alone
def check_accuracy_falls_with_eps(attacks: list[dict], worst_accuracy: dict[Threat, float], tolerance: float,
                                  large_eps: dict | None = None) -> dict:
    """``attacks``: white-box entries; ``worst_accuracy``: {(norm, eps): white-box worst-case
    accuracy} over the same set; ``large_eps`` (optional): ``{"eps", "steps", "accuracy",
    "num_samples", "subset_worst_case": {eps: accuracy}}`` -- the large-eps PGD probe and the
    subset's Linf worst case at smaller radii."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for a in attacks:
        t = _entry_threat(a)
        if t is None or a.get("accuracy") is None:
            continue
        key = (a.get("kind"), t[0], a.get("steps"), a.get("restarts"))
        groups.setdefault(key, []).append((t[1], float(a["accuracy"])))
    series = [{"attack": _label(*k), "norm": k[1], "points": pts} for k, pts in groups.items()]
    by_norm: dict[str, list[tuple[float, float]]] = {}
    for (n, e), acc in worst_accuracy.items():
        by_norm.setdefault(n, []).append((e, acc))
    series += [{"attack": "white-box worst case", "norm": n, "points": pts} for n, pts in by_norm.items()]
    if large_eps is not None:
        pts = [(float(e), float(acc)) for e, acc in large_eps.get("subset_worst_case", {}).items()
               if float(e) < float(large_eps["eps"])]
        if pts:
            pts.append((float(large_eps["eps"]), float(large_eps["accuracy"])))
            series.append({"attack": f"subset: white-box worst case, then PGD-{large_eps.get('steps')} at large eps",
                           "norm": "linf", "points": pts, "num_samples": large_eps.get("num_samples")})
    series = [s for s in series if len({p[0] for p in s["points"]}) >= 2]
    violations = []
    for s in series:
        for v in _rises(s["points"], tolerance):
            violations.append({"attack": s["attack"], "norm": s["norm"], "eps_low": v["at_low"],
                               "accuracy_low": v["accuracy_low"], "eps_high": v["at_high"],
                               "accuracy_high": v["accuracy_high"], "rise": v["rise"]})
    evidence = {"tolerance": tolerance, "violations": violations,
                "series": [{**s, "points": [{"eps": e, "accuracy": a} for e, a in sorted(s["points"])]}
                           for s in series]}
    if not series:
        return _skipped("accuracy_falls_with_eps", "no attack or worst case at two or more eps of one norm",
                        **evidence)
    return _result("accuracy_falls_with_eps", "flagged" if violations else "ok", evidence)


def check_accuracy_falls_with_steps(series: list[dict], tolerance: float) -> dict:
    """``series``: ``[{"source", "norm", "eps", "points": [{"steps", "accuracy"}], ...}]`` (the
    grid's PGD entries of one ball, the step sweep, the subset probe)."""
    series = [s for s in series if len({p["steps"] for p in s["points"]}) >= 2]
    violations = []
    for s in series:
        for v in _rises([(p["steps"], p["accuracy"]) for p in s["points"]], tolerance):
            violations.append({"source": s.get("source"), "norm": s.get("norm"), "eps": s.get("eps"),
                               "steps_low": v["at_low"], "accuracy_low": v["accuracy_low"],
                               "steps_high": v["at_high"], "accuracy_high": v["accuracy_high"], "rise": v["rise"]})
    evidence = {"tolerance": tolerance, "violations": violations,
                "series": [{**s, "points": sorted(s["points"], key=lambda p: p["steps"])} for s in series]}
    if not series:
        return _skipped("accuracy_falls_with_steps", "no PGD accuracies at two or more step counts", **evidence)
    return _result("accuracy_falls_with_steps", "flagged" if violations else "ok", evidence)


def check_iterative_beats_single_step(attacks: list[dict], tolerance: float,
                                      probes: list[dict] | None = None) -> dict:
    """``attacks``: white-box entries (whole set). Each FGSM entry is compared with the lowest
    iterative (:data:`ITERATIVE_KINDS`) entry of its ball; ``probes``: further comparisons
    already made on the subset, ``{"eps", "fgsm_accuracy", "iterative_accuracy",
    "iterative_attack", "num_samples"}``."""
    comparisons = []
    for f in attacks:
        t = _entry_threat(f)
        if f.get("kind") != "fgsm" or t is None or f.get("accuracy") is None:
            continue
        its = [a for a in attacks if a.get("kind") in ITERATIVE_KINDS and _entry_threat(a) is not None
               and _entry_threat(a)[0] == t[0] and _same_eps(a["eps"], t[1]) and a.get("accuracy") is not None]
        if not its:
            continue
        best = min(its, key=lambda a: a["accuracy"])
        comparisons.append({"source": "grid", "eps": t[1], "fgsm_attack": f.get("name"),
                            "fgsm_accuracy": float(f["accuracy"]), "iterative_attack": best.get("name"),
                            "iterative_accuracy": float(best["accuracy"])})
    for p in probes or []:
        comparisons.append({"source": "subset probe", **p})
    for c in comparisons:
        c["gap"] = c["iterative_accuracy"] - c["fgsm_accuracy"]
        c["flagged"] = c["gap"] > tolerance
    evidence = {"tolerance": tolerance, "comparisons": comparisons}
    if not comparisons:
        return _skipped("iterative_beats_single_step", "no FGSM with an iterative attack at the same eps",
                        **evidence)
    return _result("iterative_beats_single_step", "flagged" if any(c["flagged"] for c in comparisons) else "ok",
                   evidence)


def check_black_box_beats_white_box(results: list[dict], tolerance: float) -> dict:
    """``results``: per threat ``{"norm", "eps", "num_samples", "white_box_accuracy",
    "broken_only_by_black_box", ...}``; flagged where ``broken_only_by_black_box >
    tolerance * num_samples``."""
    out = []
    for r in results:
        r = dict(r)
        m = int(r["num_samples"])
        r["combined_accuracy"] = r["white_box_accuracy"] - r["broken_only_by_black_box"] / max(m, 1)
        r["flagged"] = r["broken_only_by_black_box"] > tolerance * m
        out.append(r)
    evidence = {"tolerance": tolerance, "threats": out}
    if not out:
        return _skipped("black_box_beats_white_box", "no threat to probe", **evidence)
    return _result("black_box_beats_white_box", "flagged" if any(r["flagged"] for r in out) else "ok", evidence)


def check_large_eps_reaches_chance(accuracy: float, *, eps: float, steps: int, num_samples: int, num_classes: int,
                                   chance_margin: float) -> dict:
    chance = 1.0 / num_classes
    evidence = {"norm": "linf", "eps": eps, "steps": steps, "num_samples": num_samples, "accuracy": accuracy,
                "chance": chance, "chance_margin": chance_margin, "threshold": chance + chance_margin}
    return _result("large_eps_reaches_chance", "flagged" if accuracy > chance + chance_margin else "ok", evidence)


def check_vanishing_input_gradients(grad_linf: torch.Tensor, max_fraction: float, *,
                                    grad_l2: torch.Tensor | None = None, body_stats: dict | None = None) -> dict:
    """``grad_linf``: per-sample largest |component| of the input gradient (float64)."""
    n = int(grad_linf.numel())
    if n == 0:
        return _skipped("vanishing_input_gradients", "no samples")
    zero = (grad_linf == 0).double().mean().item()
    vanishing = (grad_linf <= VANISHING_GRADIENT_LINF).double().mean().item()
    evidence = {"num_samples": n, "zero_fraction": zero, "vanishing_fraction": vanishing,
                "threshold_linf": VANISHING_GRADIENT_LINF, "max_fraction": max_fraction,
                "linf_median": grad_linf.median().item()}
    if grad_l2 is not None:
        evidence["l2_median"] = grad_l2.median().item()
    if body_stats:
        evidence["evaluation_zero_fraction"] = body_stats.get("zero_fraction")
        evidence["evaluation_l2_median"] = body_stats.get("l2_median")
    return _result("vanishing_input_gradients", "flagged" if vanishing > max_fraction else "ok", evidence)


def check_transfer_beats_white_box(attacks: list[dict], worst_accuracy: dict[Threat, float],
                                   tolerance: float) -> dict:
    """``attacks``: all entries; each ``transfer`` entry is compared with the white-box worst
    case of its ball (``worst_accuracy``; else the lowest white-box entry there)."""
    transfer = [a for a in attacks if a.get("protocol") == "transfer"]
    if not transfer:
        return _skipped("transfer_beats_white_box", "no transfer attacks in this evaluation")
    white = [a for a in attacks if a.get("protocol", "white-box") == "white-box"]
    comparisons, uncompared = [], []
    for a in transfer:
        t = _entry_threat(a)
        ref, ref_name = (_lookup(worst_accuracy, *t), "white-box worst case") if t else (None, None)
        if ref is None and t is not None:
            same = [w for w in white if _entry_threat(w) and _entry_threat(w)[0] == t[0]
                    and _same_eps(w["eps"], t[1]) and w.get("accuracy") is not None]
            if same:
                best = min(same, key=lambda w: w["accuracy"])
                ref, ref_name = float(best["accuracy"]), best.get("name")
        if ref is None or a.get("accuracy") is None:
            uncompared.append(a.get("name"))
            continue
        gap = ref - float(a["accuracy"])
        comparisons.append({"transfer_attack": a.get("name"), "source_model": a.get("source_model"), "norm": t[0],
                            "eps": t[1], "transfer_accuracy": float(a["accuracy"]), "white_box_reference": ref_name,
                            "white_box_accuracy": ref, "gap": gap, "flagged": gap > tolerance})
    evidence = {"tolerance": tolerance, "comparisons": comparisons, "uncompared": uncompared}
    if not comparisons:
        return _skipped("transfer_beats_white_box", "no white-box attack in the ball of any transfer attack",
                        **evidence)
    return _result("transfer_beats_white_box", "flagged" if any(c["flagged"] for c in comparisons) else "ok",
                   evidence)


def check_restarts_change_result(one_run: float, restarted: float, *, restarts: int, steps: int, norm: str,
                                 eps: float, num_samples: int, tolerance: float) -> dict:
    drop = one_run - restarted
    evidence = {"norm": norm, "eps": eps, "steps": steps, "restarts": restarts, "num_samples": num_samples,
                "accuracy_one_run": one_run, "accuracy_restarts": restarted, "drop": drop, "tolerance": tolerance}
    return _result("restarts_change_result", "flagged" if drop > tolerance else "ok", evidence)


# ------------------------------------------------------------------------------------ probes
class _Prober:
    """Attacks on the probed subset ``data``, model in eval mode (the caller's block); every
    probe is seeded with ``seed`` and counts a point only if it is also correct clean."""

    def __init__(self, model: nn.Module, data: Dataset, clean: torch.Tensor, *, device, batch_size: int, seed: int):
        self.model, self.data, self.clean = model, data, clean
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self._pgd: dict[tuple, torch.Tensor] = {}
        self.seconds = 0.0

    @property
    def m(self) -> int:
        return len(self.data)

    def robust(self, attack: Callable, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Per example of ``idx`` (default all): correct clean and on ``attack``'s example."""
        t0 = time.perf_counter()
        only = self.clean.clone()
        if idx is not None:
            only &= torch.zeros(self.m, dtype=torch.bool).index_fill_(0, idx, True)
        torch.manual_seed(self.seed)
        out = robust_mask(self.model, self.data, only, attack, device=self.device, batch_size=self.batch_size)
        self.seconds += time.perf_counter() - t0
        return out if idx is None else out[idx]

    def pgd(self, norm: str, eps: float, steps: int, restarts: int = 1) -> torch.Tensor:
        key = (norm, float(eps), int(steps), int(restarts))
        if key not in self._pgd:
            self._pgd[key] = self.robust(lambda m, x, y: pgd(m, x, y, norm=norm, eps=eps, steps=steps,
                                                             restarts=restarts))
        return self._pgd[key]

    def input_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (Linf, L2) norms of d CE(model(x), y) / dx (summed loss, float64)."""
        t0 = time.perf_counter()
        norms = input_gradient_norms(self.model, make_loader(self.data, self.batch_size), self.device)
        self.seconds += time.perf_counter() - t0
        return norms["linf"], norms["l2"]


def _acc(mask: torch.Tensor) -> float:
    return mask.double().mean().item() if mask.numel() else 0.0


# ------------------------------------------------------------------------------------- entry
def masking_checks(model: nn.Module, data: Dataset, body: dict, cfg: MaskingChecksConfig, *,
                   worst_masks: dict, clean_ok: torch.Tensor, device, batch_size: int, num_classes: int,
                   seed: int = 0) -> list[dict]:
    """Run the eight checks (module docstring) on an evaluation; one entry per check, in
    :data:`CHECK_NAMES` order.

    Args:
        model: the evaluated model (x in [0, 1] -> logits); put in eval mode for the probes.
        data: the evaluated dataset, in the order of ``worst_masks`` / ``clean_ok``; the probes
            use its first ``cfg.max_samples`` items.
        body: the results body so far (``attacks``, optional ``step_sweep``, ``input_gradient``).
        cfg: ``eval.checks``; with ``enabled: false`` every check is returned skipped.
        worst_masks: ``{(norm, eps): bool (N,)}`` per-example white-box worst case (robust =
            correct clean and under every white-box attack of that ball).
        clean_ok: bool ``(N,)``, correct on the clean image.
        seed: ``torch.manual_seed(seed)`` before each probe; Square's seed.
    """

    if not cfg.enabled:
        return [_skipped(n, "eval.checks.enabled is false") for n in CHECK_NAMES]
    tol = float(cfg.tolerance)
    white = _white_box(body)
    worst_masks = {(_norm(n), float(e)): torch.as_tensor(v).bool().cpu() for (n, e), v in worst_masks.items()}
    clean_ok = torch.as_tensor(clean_ok).bool().cpu()
    worst_acc = _worst_accuracy_of(worst_masks)
    results: dict[str, dict] = {}
    results["transfer_beats_white_box"] = check_transfer_beats_white_box(body.get("attacks") or [], worst_acc, tol)

    sub = eval_subset(data, cfg.max_samples)
    m = len(sub)
    if m == 0:
        for n in CHECK_NAMES:
            results.setdefault(n, _skipped(n, "no samples to probe"))
        return [results[n] for n in CHECK_NAMES]
    if clean_ok.numel() < m or any(v.numel() < m for v in worst_masks.values()):
        raise ValueError(f"clean_ok / worst_masks cover fewer examples than the {m} probed")
    sub_worst = {t: v[:m] for t, v in worst_masks.items()}
    threat = _probe_threat(white, worst_masks)

    with evaluation_mode(model):
        p = _Prober(model, sub, clean_ok[:m], device=device, batch_size=batch_size, seed=seed)

        # --- vanishing input gradients (cheap, first)
        g_linf, g_l2 = p.input_gradients()
        results["vanishing_input_gradients"] = check_vanishing_input_gradients(
            g_linf, float(cfg.zero_gradient_fraction), grad_l2=g_l2, body_stats=body.get("input_gradient"))

        # --- large eps
        large = p.pgd("linf", float(cfg.large_eps), LARGE_EPS_STEPS)
        large_acc = _acc(large)
        results["large_eps_reaches_chance"] = check_large_eps_reaches_chance(
            large_acc, eps=float(cfg.large_eps), steps=LARGE_EPS_STEPS, num_samples=m, num_classes=num_classes,
            chance_margin=float(cfg.chance_margin))
        subset_linf_worst = {e: _acc(v) for (n, e), v in sub_worst.items() if n == "linf"}
        results["accuracy_falls_with_eps"] = check_accuracy_falls_with_eps(
            white, worst_acc, tol, large_eps={"eps": float(cfg.large_eps), "steps": LARGE_EPS_STEPS,
                                              "accuracy": large_acc, "num_samples": m,
                                              "subset_worst_case": subset_linf_worst})

        # --- steps (grid, sweep, subset probe at the probe threat)
        series = []
        groups: dict[tuple, list[dict]] = {}
        for a in white:
            t = _entry_threat(a)
            if a.get("kind") == "pgd" and t and a.get("steps") and a.get("accuracy") is not None:
                groups.setdefault((*t, a.get("restarts") or 1), []).append(
                    {"steps": int(a["steps"]), "accuracy": float(a["accuracy"])})
        for (n, e, r), pts in groups.items():
            series.append({"source": "grid" if r == 1 else f"grid, {r} restarts", "norm": n, "eps": e,
                           "points": pts})
        sw = body.get("step_sweep")
        if sw and sw.get("points"):
            series.append({"source": "step_sweep", "norm": _norm(sw.get("norm")), "eps": sw.get("eps"),
                           "points": [{"steps": int(q["steps"]), "accuracy": float(q["accuracy"])}
                                      for q in sw["points"]]})
        grid_steps: list[int] = []
        if threat is not None:
            grid_steps = sorted({pt["steps"] for (n, e, r), pts in groups.items()
                                 if n == threat[0] and _same_eps(e, threat[1]) and r == 1 for pt in pts})
            steps = sorted(set(grid_steps) | {int(k) for k in cfg.step_counts})
            series.append({"source": "subset probe", "norm": threat[0], "eps": threat[1], "num_samples": m,
                           "points": [{"steps": k, "accuracy": _acc(p.pgd(*threat, k))} for k in steps]})
        results["accuracy_falls_with_steps"] = check_accuracy_falls_with_steps(series, tol)

        # --- FGSM vs iterative
        probes = []
        k_it = min(int(k) for k in cfg.step_counts)
        fgsm_entries = [a for a in white if a.get("kind") == "fgsm" and a.get("eps") is not None]
        for f in fgsm_entries:
            has_iterative = any(a.get("kind") in ITERATIVE_KINDS and _norm(a.get("norm")) == "linf"
                                and _same_eps(a.get("eps"), f["eps"]) for a in white)
            if not has_iterative and float(f["eps"]) > 0:
                eps = float(f["eps"])
                fg = p.robust(build_attack("fgsm", eps=eps))
                probes.append({"eps": eps, "fgsm_accuracy": _acc(fg), "iterative_attack": f"PGD-{k_it} Linf",
                               "iterative_accuracy": _acc(p.pgd("linf", eps, k_it)), "num_samples": m})
        if not fgsm_entries and threat is not None and threat[0] == "linf":
            eps = threat[1]
            fg = p.robust(build_attack("fgsm", eps=eps))
            probes.append({"eps": eps, "fgsm_accuracy": _acc(fg), "iterative_attack": f"PGD-{k_it} Linf",
                           "iterative_accuracy": _acc(p.pgd("linf", eps, k_it)), "num_samples": m})
        results["iterative_beats_single_step"] = check_iterative_beats_single_step(white, tol, probes)

        # --- restarts
        if threat is None:
            results["restarts_change_result"] = _skipped("restarts_change_result", "no threat model to probe")
        else:
            k_r = grid_steps[0] if grid_steps else k_it
            one = _acc(p.pgd(*threat, k_r))
            many = _acc(p.pgd(*threat, k_r, int(cfg.restarts)))
            results["restarts_change_result"] = check_restarts_change_result(
                one, many, restarts=int(cfg.restarts), steps=k_r, norm=threat[0], eps=threat[1], num_samples=m,
                tolerance=tol)

        # --- black box (Square) on the white-box robust points
        if threat is None:
            results["black_box_beats_white_box"] = _skipped("black_box_beats_white_box", "no threat model to probe")
        else:
            wb = _lookup(sub_worst, *threat)
            reference = "white-box worst case"
            if wb is None:
                k_wb = grid_steps[0] if grid_steps else k_it
                wb, reference = p.pgd(*threat, k_wb), f"PGD-{k_wb} subset probe"
            idx = wb.nonzero().flatten()
            broken = 0
            t0 = p.seconds
            if idx.numel():
                square = build_attack("square", norm=threat[0], eps=threat[1], n_queries=int(cfg.black_box_queries),
                                      n_restarts=1, seed=seed)
                broken = int((~p.robust(square, idx)).sum())
            results["black_box_beats_white_box"] = check_black_box_beats_white_box(
                [{"norm": threat[0], "eps": threat[1], "num_samples": m, "white_box_reference": reference,
                  "white_box_accuracy": _acc(wb), "attacked": int(idx.numel()), "broken_only_by_black_box": broken,
                  "black_box_attack": "square", "queries": int(cfg.black_box_queries),
                  "wall_time_s": p.seconds - t0}], tol)
    return [results[n] for n in CHECK_NAMES]


def flagged(checks: list[dict]) -> list[str]:
    """Names of the flagged checks."""
    return [c["name"] for c in checks if c.get("status") == "flagged"]
