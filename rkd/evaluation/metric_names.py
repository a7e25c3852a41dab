"""One naming scheme for metrics, shared by MLflow and Ray Tune.

Names are hierarchical with ``/`` (the MLflow UI groups metrics by their first part) and every
accuracy is in **percent** (0-100), as in every table:

- ``clean/accuracy``; ``robust/<protocol>/<attack label>`` with the label's ``/`` written as
  ``-`` (``robust/white-box/PGD-7 Linf 8-255``, ``robust/transfer/FGSM 8-255``); the
  per-example worst case per threat ``robust/worst-case/Linf 8-255``; the headline
  ``robust/accuracy`` (the worst case at the largest Linf ball);
- stepped series (one point per step): ``robust/vs-eps x255/<attack family>`` (Linf, step = eps
  in 1/255, 0 = clean), ``robust/vs-eps x100/<family>`` (L2, step = 100 eps) and
  ``robust/vs-steps/<threat>`` (the step sweep, step = PGD steps, 0 = clean);
- per epoch: ``train/<loss term>``, ``train/accuracy``, ``train/lr``, ``validation/accuracy``
  (or ``test/accuracy by epoch`` without a validation split), ``time/epoch_s``;
- ``time/train_s``, ``time/eval_s``, ``jsma/<saliency>/success rate``, ``input-gradient/...``.

A tune space names its metric by label (``clean``, ``robust``, ``worst case Linf 8/255``,
``PGD-7 Linf 8/255``, ``FGSM 8/255 (transfer)``): :func:`metric_for_label` maps it here.
"""

from __future__ import annotations

import re

from rkd.evaluation.curves import eps_curves, steps_curves

CLEAN = "clean/accuracy"
ROBUST = "robust/accuracy"
#: the first parts of the accuracy metrics (what a sweep summary keeps)
ACCURACY_GROUPS = ("clean/", "robust/")
TRANSFER_SUFFIX = " (transfer)"
WORST_CASE = "worst case"
PERCENT = 100.0
#: per-epoch keys of the trainer that are accuracies (fractions there, percent here)
_EPOCH_ACCURACIES = {"train_acc": "train/accuracy", "val_acc": "validation/accuracy",
                     "test_acc": "test/accuracy by epoch"}
_EPOCH_NAMES = {"lr": "train/lr", "epoch_time_s": "time/epoch_s"}


def metric_key(text: str) -> str:
    """``text`` as one part of a metric name: ``/`` and the characters MLflow refuses become ``-``."""
    return re.sub(r"[^\w.\- ]", "-", text.replace("/", "-")).strip()


def attack_metric(label: str, protocol: str = "white-box") -> str:
    return f"robust/{protocol}/{metric_key(label)}"


def ball_label(norm: str, eps_label: str) -> str:
    """``Linf 8/255``, ``L2 0.5``: a threat model as tables write it."""
    return f"{'L2' if norm == 'l2' else 'Linf'} {eps_label}"


def worst_case_label(norm: str, eps_label: str) -> str:
    """``worst case Linf 8/255``: the column / tune-space label of a threat's worst case."""
    return f"{WORST_CASE} {ball_label(norm, eps_label)}"


def worst_case_metric(norm: str, eps_label: str) -> str:
    return attack_metric(ball_label(norm, eps_label), "worst-case")


def is_accuracy_metric(name: str) -> bool:
    return name.startswith(ACCURACY_GROUPS)


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
    """Clean, every attack, the worst cases and the headline of a results dict, in percent."""
    if not results:
        return {}
    out = {CLEAN: results["clean_accuracy"]}
    for a in results["attacks"]:
        out[attack_metric(a["name"], a["protocol"])] = a["accuracy"]
    for w in results.get("worst_case") or []:
        out[worst_case_metric(w["norm"], w["eps_label"])] = w["accuracy"]
    if results.get("headline"):
        out[ROBUST] = results["headline"]["accuracy"]
    return {k: PERCENT * v for k, v in out.items() if v is not None}


def summary_metrics(results: dict) -> dict[str, float]:
    """:func:`accuracy_metrics` plus times, JSMA success rates (%) and input-gradient statistics."""
    out = {**accuracy_metrics(results), "time/eval_s": results["eval_wall_time_s"]}
    if results.get("train_wall_time_s") is not None:
        out["time/train_s"] = results["train_wall_time_s"]
    for e in results.get("jsma") or []:
        out[f"jsma/{metric_key(e['saliency'])}/success rate"] = _percent(e.get("success_rate"))
    grad = results.get("input_gradient")
    if grad:
        out["input-gradient/l2 mean"] = grad.get("l2_mean")
        out["input-gradient/l2 median"] = grad.get("l2_median")
        out["input-gradient/zero share"] = _percent(grad.get("zero_fraction"))
    return {k: v for k, v in out.items() if v is not None}  # None: not measured (e.g. no image to attack)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else PERCENT * fraction


def epoch_metrics(metrics: dict) -> dict[str, float]:
    """A trainer's per-epoch metrics (``train_loss``, ``train_acc``, ``lr``, ``val_acc``, ...)
    under their hierarchical names, accuracies in percent; keys it does not know keep theirs."""
    out = {}
    for k, v in metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k in _EPOCH_ACCURACIES:
            out[_EPOCH_ACCURACIES[k]] = PERCENT * v
        elif k in _EPOCH_NAMES:
            out[_EPOCH_NAMES[k]] = v
        elif k.startswith("train_"):
            out[f"train/{metric_key(k[len('train_'):])}"] = v
        else:
            out[metric_key(k)] = v
    return out


def eps_step(eps: float, norm: str) -> int:
    """The MLflow step of an eps on a ladder: eps in 1/255 (Linf) or 100 eps (L2)."""
    return round(eps * (255 if norm == "linf" else 100))


def stepped_metrics(results: dict) -> list[tuple[str, float, int]]:
    """The robustness curves of a results dict as (metric, accuracy in %, step) points: the eps
    ladders (``robust/vs-eps x255/...``, ``robust/vs-eps x100/...``) and the step sweeps
    (``robust/vs-steps/...``) of :mod:`rkd.evaluation.curves`."""
    out = []
    for c in eps_curves(results):
        group = "robust/vs-eps x255" if c.norm == "linf" else "robust/vs-eps x100"
        name = f"{group}/{metric_key(c.label)}" + (" transfer" if c.protocol == "transfer" else "")
        out += [(name, PERCENT * acc, eps_step(eps, c.norm)) for eps, acc in c.points]
    for c in steps_curves(results):
        out += [(f"robust/vs-steps/{metric_key(c.label)}", PERCENT * acc, int(k)) for k, acc in c.points]
    return out
