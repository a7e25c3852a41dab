"""Robustness curves of one evaluation: accuracy against eps (an eps ladder per attack family)
and against PGD steps (the step sweeps), as plain data that MLflow's stepped metrics
(:func:`rkd.evaluation.metric_names.stepped_metrics`) and the figures
(:mod:`rkd.evaluation.figures`) both draw from.

An eps curve joins the attacks of one family (same kind, norm, steps, protocol and, for
transfer, source model; the label without its eps, e.g. ``PGD-7 Linf``) and starts at the
clean accuracy (eps 0); unbounded attacks (CW: no norm or eps) and attacks at eps 0 have none.
The per-example worst cases form a ``worst case`` curve per norm (also from the clean point).

A steps curve is a series of PGD accuracies at two or more step counts: the step sweep
(``results["step_sweep"]``, 0 steps = clean), and the series of the ``accuracy_falls_with_steps``
masking check that are not the sweep again: the grid's PGD at several step counts of one ball
and the check's subset probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STEPS_CHECK = "accuracy_falls_with_steps"
#: the masking check's copy of ``results["step_sweep"]`` (not drawn twice)
SWEEP_SOURCE = "step_sweep"
PROBE_SOURCE = "subset probe"
WORST_CASE = "worst case"


@dataclass
class Curve:
    """``points``: (x, accuracy as a fraction), x = eps or steps, sorted by x. ``source``: the
    model a transfer curve's adversarial examples were crafted on (None otherwise)."""

    label: str
    norm: str | None
    protocol: str = "white-box"
    points: list[tuple[float, float]] = field(default_factory=list)
    source: str | None = None


def norm_name(norm: str | None) -> str:
    """``Linf`` / ``L2`` as tables write them."""
    return "L2" if norm == "l2" else "Linf"


def family_label(attack: dict) -> str:
    """``PGD-7 Linf 8/255`` -> ``PGD-7 Linf``; the norm is added where the name lacks it."""
    name = attack["name"].replace(attack.get("eps_label") or "\0", "").split()
    norm = norm_name(attack["norm"])
    return " ".join(name if norm in name else [*name, norm])


def _bounded(entry: dict) -> bool:
    """A measured attack or worst case on an eps ball of positive radius (not CW, not eps 0)."""
    return (entry.get("eps") is not None and entry.get("norm") is not None and float(entry["eps"]) > 0
            and entry.get("accuracy") is not None)


def eps_curves(results: dict) -> list[Curve]:
    """One curve per attack family with an eps (in the order of ``results["attacks"]``), then
    one ``worst case`` curve per norm; each from (0, clean accuracy), points sorted by eps."""
    clean = (0.0, float(results["clean_accuracy"]))
    curves: dict[tuple, Curve] = {}
    for a in results.get("attacks") or []:
        if not _bounded(a):
            continue
        source = a.get("source_model") if a["protocol"] == "transfer" else None
        key = (a["kind"], a["norm"], a.get("steps"), a["protocol"], source, family_label(a))
        if key not in curves:
            curves[key] = Curve(family_label(a), a["norm"], a["protocol"], [clean], source)
        curves[key].points.append((float(a["eps"]), float(a["accuracy"])))
    for w in results.get("worst_case") or []:
        if not _bounded(w):
            continue
        key = (WORST_CASE, w["norm"])
        if key not in curves:
            curves[key] = Curve(f"{WORST_CASE} {norm_name(w['norm'])}", w["norm"], WORST_CASE, [clean])
        curves[key].points.append((float(w["eps"]), float(w["accuracy"])))
    for c in curves.values():
        c.points.sort()
    return list(curves.values())


def _ball(norm: str | None, eps: float | None) -> str:
    if eps is None:
        return norm_name(norm)
    return f"Linf {float(eps) * 255:g}/255" if norm == "linf" else f"{norm_name(norm)} {float(eps):g}"


def _check_label(series: dict) -> str:
    """``grid PGD Linf 8/255`` (``... with 3 restarts``), ``probe PGD Linf 8/255 on 100 images``."""
    source, ball = series.get("source") or "check", _ball(series.get("norm"), series.get("eps"))
    if source == PROBE_SOURCE:
        return f"probe PGD {ball} on {series.get('num_samples', '?')} images"
    if source.startswith("grid, "):  # "grid, 3 restarts"
        return f"grid PGD {ball} with {source[len('grid, '):]}"
    return f"{source} PGD {ball}"


def _steps_points(points: list[dict]) -> list[tuple[float, float]]:
    return sorted((int(p["steps"]), float(p["accuracy"])) for p in points if p.get("accuracy") is not None)


def steps_curves(results: dict) -> list[Curve]:
    """The step sweep (``results["step_sweep"]``, 0 steps = clean) and the masking check's
    series on top of it (``accuracy_falls_with_steps``: the grid's PGD at several step counts,
    the subset probe), each as accuracy against steps; only those at two or more step counts."""
    out = []
    sweep = results.get("step_sweep")
    if sweep and sweep.get("points"):
        ball = f"{norm_name(sweep['norm'])} {sweep['eps_label']}"
        out.append(Curve(f"PGD {ball}", sweep["norm"], "white-box", _steps_points(sweep["points"])))
    for check in results.get("checks") or []:
        if check.get("name") != STEPS_CHECK or check.get("status") == "skipped":
            continue
        for s in (check.get("evidence") or {}).get("series") or []:
            if s.get("source") == SWEEP_SOURCE or not s.get("points"):
                continue  # the sweep is drawn from results["step_sweep"]
            out.append(Curve(_check_label(s), s.get("norm"), "white-box", _steps_points(s["points"])))
    return [c for c in out if len({k for k, _ in c.points}) >= 2]
