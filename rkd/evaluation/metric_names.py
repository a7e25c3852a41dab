"""One naming scheme for accuracy metrics, shared by MLflow and Ray Tune.

``acc.clean``, ``acc.<protocol>.<attack label>`` (the label with spaces, ``/`` and ``=``
written as ``_``, e.g. ``acc.white-box.PGD-7_Linf_8_255``, ``acc.transfer.FGSM_8_255``), the
per-example worst case per threat ``acc.worst-case.<Linf|L2>_<eps>`` and the headline
``acc.robust`` (the worst case at the largest Linf ball); values are fractions in [0, 1]. A
tune space names its metric by label (``clean``, ``robust``, ``worst case Linf 8/255``,
``PGD-7 Linf 8/255``, ``FGSM 8/255 (transfer)``): :func:`metric_for_label` maps it here.
"""

from __future__ import annotations

CLEAN = "acc.clean"
PREFIX = "acc."
ROBUST = "acc.robust"
TRANSFER_SUFFIX = " (transfer)"
WORST_CASE = "worst case"


def attack_metric(label: str, protocol: str = "white-box") -> str:
    name = label.replace(" ", "_").replace("/", "_").replace("=", "")
    return f"{PREFIX}{protocol}.{name}"


def ball_label(norm: str, eps_label: str) -> str:
    """``Linf 8/255``, ``L2 0.5``: a threat model as tables write it."""
    return f"{'L2' if norm == 'l2' else 'Linf'} {eps_label}"


def worst_case_label(norm: str, eps_label: str) -> str:
    """``worst case Linf 8/255``: the column / tune-space label of a threat's worst case."""
    return f"{WORST_CASE} {ball_label(norm, eps_label)}"


def worst_case_metric(norm: str, eps_label: str) -> str:
    return attack_metric(ball_label(norm, eps_label), "worst-case")


def metric_for_label(label: str) -> str:
    """The metric of a tune-space label (see the module docstring)."""
    if label == "clean":
        return CLEAN
    if label == "robust":
        return ROBUST
    if label.startswith(WORST_CASE + " "):
        return attack_metric(label[len(WORST_CASE) + 1:], "worst-case")
    if label.endswith(TRANSFER_SUFFIX):
        return attack_metric(label[: -len(TRANSFER_SUFFIX)], "transfer")
    return attack_metric(label)


def accuracy_metrics(results: dict | None) -> dict[str, float]:
    """Clean and every attack accuracy of a results dict, by metric name."""
    if not results:
        return {}
    out = {CLEAN: results["clean_accuracy"]}
    for a in results["attacks"]:
        out[attack_metric(a["name"], a["protocol"])] = a["accuracy"]
    for w in results.get("worst_case") or []:
        out[worst_case_metric(w["norm"], w["eps_label"])] = w["accuracy"]
    if results.get("headline"):
        out[ROBUST] = results["headline"]["accuracy"]
    return out
