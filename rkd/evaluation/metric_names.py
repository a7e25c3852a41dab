"""One naming scheme for accuracy metrics, shared by MLflow and Ray Tune.

``acc.clean`` and ``acc.<protocol>.<attack label>`` (the label with spaces, ``/`` and ``=``
written as ``_``, e.g. ``acc.white-box.PGD-7_Linf_8_255``, ``acc.transfer.FGSM_8_255``);
values are fractions in [0, 1]. A tune space names its metric by label (``clean``,
``PGD-7 Linf 8/255``, ``FGSM 8/255 (transfer)``): :func:`metric_for_label` maps it here.
"""

from __future__ import annotations

CLEAN = "acc.clean"
PREFIX = "acc."
TRANSFER_SUFFIX = " (transfer)"


def attack_metric(label: str, protocol: str = "white-box") -> str:
    name = label.replace(" ", "_").replace("/", "_").replace("=", "")
    return f"{PREFIX}{protocol}.{name}"


def metric_for_label(label: str) -> str:
    """The metric of a tune-space label (see the module docstring)."""
    if label == "clean":
        return CLEAN
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
    return out
