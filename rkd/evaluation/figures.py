"""Figures of rkd results: the robustness curves of one model and the cost/robustness trade-off
across methods, drawn with matplotlib's Agg canvas (no pyplot, no global state), written as PNG.

Inputs are results dicts (the content of ``results.json``, see :mod:`rkd.evaluation.results`);
accuracies there are fractions, every figure shows them in percent.

:func:`robustness_figure`
    (a) accuracy against eps, one panel per norm (Linf in units of 1/255, L2 raw): the eps
    curves of :func:`rkd.evaluation.curves.eps_curves`, one line per white-box attack family
    (the attack name without its eps, e.g. ``PGD-7 Linf``) starting at the clean accuracy at
    eps 0; the per-threat worst case as star markers; transfer-protocol attacks as dashed lines
    (also from the clean point), labelled ``(transfer from <source>)``. Unbounded attacks (CW:
    no norm or eps) and attacks at eps 0 have no curve.
    (b) accuracy against PGD steps, where a step series exists: the steps curves of
    :func:`rkd.evaluation.curves.steps_curves` (``step_sweep``, the grid's PGD at several step
    counts and the subset probe of the ``accuracy_falls_with_steps`` masking check); log x
    (symlog when 0 steps = clean is among them) beyond a 10x range.

:func:`tradeoff_figure`
    Clean and headline robust accuracy against train time, one pair of markers per method,
    joined by a thin vertical line. Rows without a train time sit at x = 0, their label marked
    ``(no train time)`` and the legend saying so; with a log x axis (positive times spread over
    more than 20x) they make it ``symlog``, linear up to the shortest train time, so x = 0 stays
    on the axis.

:func:`save_png` writes a figure atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rkd.evaluation.curves import WORST_CASE, Curve, eps_curves, steps_curves
from rkd.evaluation.metric_names import PERCENT, ball_label

PANEL_SIZE = (5.0, 4.0)
#: the positive-x spread above which an axis turns logarithmic
STEPS_LOG_RATIO = 10.0
TIME_LOG_RATIO = 20.0
NORM_ORDER = ("linf", "l2")
NO_TRAIN_TIME = "no train time"


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _pct(x: float) -> float:
    return PERCENT * float(x)


# ------------------------------------------------------------------------------ robustness
def robustness_figure(results: dict, title: str | None = None) -> Figure | None:
    """Accuracy (%) against eps per norm and, where a step sweep exists, against PGD steps, of
    the model of ``results``; None when there is nothing to plot."""
    eps_panels = eps_curves_by_norm(results)
    steps = steps_curves(results)
    if not eps_panels and not steps:
        return None
    panels = len(eps_panels) + (1 if steps else 0)
    fig = _new_figure(PANEL_SIZE[0] * panels, PANEL_SIZE[1])
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, (norm, curves) in zip(axes, eps_panels.items()):
        _draw_eps_panel(ax, norm, curves)
    if steps:
        _draw_steps_panel(axes[-1], steps)
    fig.suptitle(_robustness_title(results, title))
    return fig


def eps_curves_by_norm(results: dict) -> dict[str, list[Curve]]:
    """:func:`~rkd.evaluation.curves.eps_curves` per norm, Linf first, then L2, then any other."""
    by_norm: dict[str, list[Curve]] = {}
    for c in eps_curves(results):
        by_norm.setdefault(c.norm, []).append(c)
    order = sorted(by_norm, key=lambda n: (NORM_ORDER.index(n) if n in NORM_ORDER else len(NORM_ORDER), n))
    return {n: by_norm[n] for n in order}


def curve_label(curve: Curve) -> str:
    """The legend entry: the curve's label, a transfer curve's with ``(transfer from <source>)``."""
    if curve.protocol == "transfer":
        return f"{curve.label} (transfer from {curve.source or '?'})"
    return curve.label


def eps_axis_scale(norm: str) -> float:
    """Linf radii are shown in units of 1/255; other norms as they are."""
    return 255.0 if norm == "linf" else 1.0


def eps_axis_label(norm: str) -> str:
    return "eps (Linf, x/255)" if norm == "linf" else f"eps ({'L2' if norm == 'l2' else norm})"


def _draw_eps_panel(ax: Axes, norm: str, curves: list[Curve]) -> None:
    scale = eps_axis_scale(norm)
    for c in curves:
        if c.protocol == WORST_CASE:  # markers at the attacked radii, without the clean point
            points = [(e, acc) for e, acc in c.points if e > 0]
            ax.plot([scale * e for e, _ in points], [_pct(acc) for _, acc in points], linestyle="none",
                    marker="*", markersize=13, color="black", label=curve_label(c), zorder=3)
            continue
        x, y = [scale * e for e, _ in c.points], [_pct(acc) for _, acc in c.points]
        if c.protocol == "transfer":
            ax.plot(x, y, linestyle="--", marker="x", label=curve_label(c))
        else:
            ax.plot(x, y, linestyle="-", marker="o", markersize=4, label=curve_label(c))
    ax.set_xlabel(eps_axis_label(norm))
    _accuracy_axis(ax)
    ax.set_title(f"accuracy vs eps ({'L2' if norm == 'l2' else 'Linf' if norm == 'linf' else norm})")
    ax.legend(fontsize=7)


def _accuracy_axis(ax: Axes) -> None:
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, PERCENT)
    ax.grid(True, alpha=0.3)


def _robustness_title(results: dict, title: str | None) -> str:
    text = title or (results.get("run") or {}).get("name") or "results"
    headline = results.get("headline")
    if headline:
        ball = ball_label(headline["norm"], headline["eps_label"])
        text += f" - worst case {ball}: {_pct(headline['accuracy']):.1f}%"
    return text


# ----------------------------------------------------------------------------------- steps
def _draw_steps_panel(ax: Axes, curves: list[Curve]) -> None:
    for c in curves:
        ax.plot([k for k, _ in c.points], [_pct(acc) for _, acc in c.points], marker="o", markersize=4,
                label=curve_label(c))
    steps = [k for c in curves for k, _ in c.points]
    positive = [k for k in steps if k > 0]
    if positive and max(positive) / min(positive) > STEPS_LOG_RATIO:
        if min(steps) <= 0:
            ax.set_xscale("symlog", linthresh=1.0)
        else:
            ax.set_xscale("log")
    ax.set_xlabel("attack steps")
    _accuracy_axis(ax)
    ax.set_title("accuracy vs attack steps")
    ax.legend(fontsize=7)


# -------------------------------------------------------------------------------- trade-off
def tradeoff_figure(rows: list[tuple[str, dict]], title: str | None = None) -> Figure | None:
    """Clean and headline robust accuracy (%) against train time (s), one pair per (label,
    results) row; None without rows. See the module docstring for rows without a train time."""
    if not rows:
        return None
    points = [tradeoff_point(label, r) for label, r in rows]
    fig = _new_figure(11.0, 5.0, layout=None)  # placed by hand: the plot, then the key to its right
    ax = fig.add_axes((0.07, 0.11, 0.52, 0.8))
    xs = [p["x"] for p in points]
    ax.scatter(xs, [p["clean"] for p in points], marker="o", s=40, label="clean", zorder=3)
    robust = [p for p in points if p["robust"] is not None]
    if robust:
        ax.vlines([p["x"] for p in robust], [p["robust"] for p in robust], [p["clean"] for p in robust],
                  colors="0.6", linewidth=0.8, zorder=1)
        ax.scatter([p["x"] for p in robust], [p["robust"] for p in robust], marker="v", s=40, zorder=3,
                   label=f"worst-case robust ({', '.join(dict.fromkeys(p['ball'] for p in robust))})")
    for i, p in enumerate(points, 1):  # numbers on the plot, labels in the key beside it: long labels never overlap
        ax.annotate(str(i), (p["x"], p["clean"]), xytext=(3, 4), textcoords="offset points", fontsize=8)
    fig.text(0.61, 0.91, "\n".join(f"{i}  {p['label']}" for i, p in enumerate(points, 1)), fontsize=8, va="top")
    if any(not p["timed"] for p in points):
        ax.plot([], [], linestyle="none", label=f"x = 0: {NO_TRAIN_TIME}")
    _time_axis(ax, points)
    ax.set_xlabel("train time (s)")
    _accuracy_axis(ax)
    ax.set_title(title or "cost vs robustness")
    ax.legend(fontsize=8)
    return fig


def tradeoff_point(label: str, results: dict) -> dict:
    """``{"label", "x" (train time in s; 0 without one), "timed", "clean" (%), "robust" (% or
    None without a headline), "ball"}`` of one row."""
    seconds = results.get("train_wall_time_s")
    headline = results.get("headline")
    timed = seconds is not None
    return {"label": label if timed else f"{label} ({NO_TRAIN_TIME})", "x": float(seconds) if timed else 0.0,
            "timed": timed, "clean": _pct(results["clean_accuracy"]),
            "robust": _pct(headline["accuracy"]) if headline else None,
            "ball": ball_label(headline["norm"], headline["eps_label"]) if headline else None}


def _time_axis(ax: Axes, points: list[dict]) -> None:
    """Log x when the positive train times spread over more than :data:`TIME_LOG_RATIO`;
    symlog (linear below the shortest time) when some row sits at x = 0."""
    positive = [p["x"] for p in points if p["x"] > 0]
    if not positive or max(positive) / min(positive) <= TIME_LOG_RATIO:
        return
    if any(p["x"] <= 0 for p in points):
        ax.set_xscale("symlog", linthresh=min(positive))
    else:
        ax.set_xscale("log")


# ------------------------------------------------------------------------------------ files
def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) through a temporary file in the
    same directory, renamed into place; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
