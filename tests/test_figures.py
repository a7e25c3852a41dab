"""rkd.evaluation.figures: the plotted data are the results' accuracies in percent, on the right axes."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from rkd.evaluation import figures
from rkd.evaluation.figures import robustness_figure, save_png, tradeoff_figure

EPS4, EPS8, EPS16 = 4 / 255, 8 / 255, 16 / 255


def attack(name: str, kind: str, norm: str | None, eps: float | None, eps_label: str | None, steps: int | None,
           accuracy: float, protocol: str = "white-box", source_model: str | None = None) -> dict:
    """An ``attacks[]`` entry of results.json, the keys the figures read."""
    return {"name": name, "kind": kind, "norm": norm, "eps": eps, "eps_label": eps_label, "steps": steps,
            "protocol": protocol, "source_model": source_model, "accuracy": accuracy}


def make_results(**changes) -> dict:
    """A results dict after the schema of a real digits run (kept to the keys figures read)."""
    results = {
        "schema": "rkd.results/1",
        "run": {"name": "digits-adversarial", "method": "adversarial"},
        "clean_accuracy": 0.9,
        "attacks": [
            attack("FGSM 4/255", "fgsm", "linf", EPS4, "4/255", 1, 0.8),
            attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.7),
            attack("PGD-7 L2 0.25", "pgd", "l2", 0.25, "0.25", 7, 0.85),
            attack("PGD-7 L2 0.5", "pgd", "l2", 0.5, "0.5", 7, 0.75),
            attack("PGD-7 Linf 8/255", "pgd", "linf", EPS8, "8/255", 7, 0.6),
            attack("PGD-7 Linf 4/255", "pgd", "linf", EPS4, "4/255", 7, 0.75),
            attack("CW c=1", "cw", None, None, None, 100, 0.01),
            attack("PGD-20 Linf 8/255", "pgd", "linf", EPS8, "8/255", 20, 0.8, "transfer", "digits-standard"),
            attack("PGD-20 Linf 16/255", "pgd", "linf", EPS16, "16/255", 20, 0.65, "transfer", "digits-standard"),
        ],
        "worst_case": [{"norm": "linf", "eps": EPS8, "eps_label": "8/255", "accuracy": 0.55, "suite": "fast"}],
        "headline": {"norm": "linf", "eps": EPS8, "eps_label": "8/255", "accuracy": 0.55, "suite": "fast"},
        "step_sweep": None,
        "checks": None,
        "train_wall_time_s": 48.0,
    }
    return {**results, **changes}


def sweep(points: list[tuple[int, float]]) -> dict:
    return {"norm": "linf", "eps": EPS8, "eps_label": "8/255",
            "points": [{"steps": k, "step_size": None, "accuracy": acc, "wall_time_s": 1.0} for k, acc in points]}


def close(actual, expected) -> bool:
    """Same shape and values up to float rounding (nested sequences too)."""
    return np.shape(actual) == np.shape(expected) and bool(np.allclose(actual, expected))


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def xy(line) -> tuple[list[float], list[float]]:
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


# ------------------------------------------------------------------------------ robustness
def test_eps_panels_plot_accuracies_in_percent_from_the_clean_point():
    fig = robustness_figure(make_results())
    linf, l2 = fig.axes
    assert linf.get_xlabel() == "eps (Linf, x/255)" and l2.get_xlabel() == "eps (L2)"
    assert linf.get_ylabel() == "accuracy (%)" and linf.get_ylim() == (0.0, 100.0)
    lines = lines_by_label(linf)
    assert close(xy(lines["FGSM Linf"]), ([0, 4, 8], [90, 80, 70]))
    assert close(xy(lines["PGD-7 Linf"]), ([0, 4, 8], [90, 75, 60]))  # sorted by eps, not by config order
    assert close(xy(lines_by_label(l2)["PGD-7 L2"]), ([0, 0.25, 0.5], [90, 85, 75]))


def test_worst_case_markers_and_dashed_transfer_lines():
    linf = robustness_figure(make_results()).axes[0]
    lines = lines_by_label(linf)
    worst = lines["worst case Linf"]
    assert close(xy(worst), ([8], [55]))
    assert worst.get_linestyle() == "None" and worst.get_marker() == "*"
    transfer = lines["PGD-20 Linf (transfer from digits-standard)"]
    assert transfer.get_linestyle() == "--"
    assert close(xy(transfer), ([0, 8, 16], [90, 80, 65]))
    assert lines["PGD-7 Linf"].get_linestyle() == "-"


def test_unbounded_attacks_are_left_out():
    fig = robustness_figure(make_results())
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert not any("CW" in label or "cw" in label for label in labels)
    assert len(fig.axes) == 2  # Linf and L2, no panel for a norm-less attack
    only_cw = make_results(attacks=[attack("CW c=1", "cw", None, None, None, 100, 0.01)], worst_case=[])
    assert robustness_figure(only_cw) is None


def test_attack_families_keep_their_variants_apart():
    apgd = [attack("APGD-CE-50 Linf 8/255", "apgd", "linf", EPS8, "8/255", 50, 0.6),
            attack("APGD-T3-50 Linf 8/255", "apgd", "linf", EPS8, "8/255", 50, 0.5),
            attack("PGD-20 Linf 8/255", "pgd", "linf", EPS8, "8/255", 20, 0.58),
            attack("strong one", "pgd", "linf", EPS16, "16/255", 20, 0.3)]
    lines = lines_by_label(robustness_figure(make_results(attacks=apgd, worst_case=[])).axes[0])
    assert set(lines) == {"APGD-CE-50 Linf", "APGD-T3-50 Linf", "PGD-20 Linf", "strong one Linf"}
    assert close(xy(lines["strong one Linf"]), ([0, 16], [90, 30]))  # a custom name: the name and the norm


def test_step_panel_only_with_a_sweep():
    assert len(robustness_figure(make_results()).axes) == 2
    fig = robustness_figure(make_results(step_sweep=sweep([(0, 0.9), (1, 0.7), (7, 0.6), (50, 0.55)])))
    steps = fig.axes[-1]
    assert len(fig.axes) == 3 and steps.get_xlabel() == "attack steps"
    (line,) = steps.get_lines()
    assert close(xy(line), ([0, 1, 7, 50], [90, 70, 60, 55]))
    assert steps.get_xscale() == "symlog"  # 50x range with 0 steps (clean) on it


def test_step_panel_from_the_masking_check_series():
    check = {"name": "accuracy_falls_with_steps", "status": "ok", "evidence": {"series": [
        {"source": "subset probe", "norm": "linf", "eps": EPS8, "num_samples": 100,
         "points": [{"steps": 7, "accuracy": 0.7}, {"steps": 10, "accuracy": 0.68}, {"steps": 50, "accuracy": 0.66}]},
        {"source": "step_sweep", "norm": "linf", "eps": EPS8,
         "points": [{"steps": 0, "accuracy": 0.9}, {"steps": 7, "accuracy": 0.6}]},
    ]}}
    fig = robustness_figure(make_results(checks=[check]))
    steps = fig.axes[-1]
    assert len(fig.axes) == 3
    (line,) = steps.get_lines()  # the check's copy of the sweep is not drawn
    assert line.get_label() == "probe PGD Linf 8/255 on 100 images"
    assert close(xy(line), ([7, 10, 50], [70, 68, 66]))
    assert steps.get_xscale() == "linear"  # 7..50 is within 10x


def test_step_panel_draws_the_grid_series_once_and_no_single_points():
    check = {"name": "accuracy_falls_with_steps", "status": "ok", "evidence": {"series": [
        {"source": "grid", "norm": "linf", "eps": EPS8,
         "points": [{"steps": 20, "accuracy": 0.58}, {"steps": 7, "accuracy": 0.6}]},
        {"source": "step_sweep", "norm": "linf", "eps": EPS8,
         "points": [{"steps": 0, "accuracy": 0.9}, {"steps": 7, "accuracy": 0.6}]},
        {"source": "subset probe", "norm": "linf", "eps": EPS8, "num_samples": 50,
         "points": [{"steps": 7, "accuracy": 0.62}]},
    ]}}
    fig = robustness_figure(make_results(step_sweep=sweep([(7, 0.6), (0, 0.9)]), checks=[check]))
    lines = lines_by_label(fig.axes[-1])
    assert set(lines) == {"PGD Linf 8/255", "grid PGD Linf 8/255"}  # sweep once, the 1-point probe not at all
    assert close(xy(lines["PGD Linf 8/255"]), ([0, 7], [90, 60]))
    assert close(xy(lines["grid PGD Linf 8/255"]), ([7, 20], [60, 58]))


def test_attacks_at_eps_zero_add_no_point():
    zero = attack("PGD-7 Linf 0/255", "pgd", "linf", 0.0, "0/255", 7, 0.88)
    results = make_results()
    results["attacks"] = [zero, *results["attacks"]]
    lines = lines_by_label(robustness_figure(results).axes[0])
    assert close(xy(lines["PGD-7 Linf"]), ([0, 4, 8], [90, 75, 60]))  # eps 0 is the clean point only


def test_transfer_lines_keep_their_source_models_apart():
    attacks = [attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.8, "transfer", "a"),
               attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.7, "transfer", "b"),
               attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.5)]
    lines = lines_by_label(robustness_figure(make_results(attacks=attacks, worst_case=[])).axes[0])
    assert set(lines) == {"FGSM Linf (transfer from a)", "FGSM Linf (transfer from b)", "FGSM Linf"}
    assert close(xy(lines["FGSM Linf (transfer from b)"]), ([0, 8], [90, 70]))
    assert lines["FGSM Linf"].get_linestyle() == "-"


def test_step_sweep_alone_and_log_scale_without_zero():
    results = make_results(attacks=[], worst_case=[], headline=None,
                           step_sweep=sweep([(1, 0.8), (10, 0.7), (100, 0.65)]))
    fig = robustness_figure(results)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"


def test_nothing_to_plot_and_titles():
    assert robustness_figure(make_results(attacks=[], worst_case=[], headline=None)) is None
    assert robustness_figure(make_results(attacks=[], worst_case=[], step_sweep=sweep([(0, 0.9)]))) is None
    assert robustness_figure(make_results()).get_suptitle() == "digits-adversarial - worst case Linf 8/255: 55.0%"
    assert robustness_figure(make_results(headline=None), title="mine").get_suptitle() == "mine"


# -------------------------------------------------------------------------------- trade-off
def row(clean: float, robust: float | None, seconds: float | None) -> dict:
    headline = None if robust is None else {"norm": "linf", "eps": EPS8, "eps_label": "8/255", "accuracy": robust}
    return make_results(clean_accuracy=clean, headline=headline, train_wall_time_s=seconds)


def scatter_points(ax) -> dict[str, list[tuple[float, float]]]:
    return {c.get_label(): [tuple(map(float, p)) for p in c.get_offsets()] for c in ax.collections
            if not c.get_label().startswith("_")}


def test_tradeoff_points_labels_and_joining_lines():
    fig = tradeoff_figure([("adversarial", row(0.9, 0.5, 40.0)), ("trades", row(0.8, 0.6, 80.0)),
                           ("standard", row(0.95, None, 10.0))], title="digits")
    (ax,) = fig.axes
    points = scatter_points(ax)
    assert close(points["clean"], [(40, 90), (80, 80), (10, 95)])
    assert close(points["worst-case robust (Linf 8/255)"], [(40, 50), (80, 60)])
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]  # numbered on the plot ...
    assert close([tuple(t.xy) for t in ax.texts], [(40, 90), (80, 80), (10, 95)])
    assert fig.texts[0].get_text() == "1  adversarial\n2  trades\n3  standard"  # ... named in the key
    (joins,) = [c for c in ax.collections if c.get_label().startswith("_")]
    assert close([seg.tolist() for seg in joins.get_segments()], [[[40, 50], [40, 90]], [[80, 60], [80, 80]]])
    assert ax.get_xlabel() == "train time (s)" and ax.get_ylabel() == "accuracy (%)"
    assert ax.get_title() == "digits" and ax.get_xscale() == "linear"  # 10..80 s: within 20x


def test_tradeoff_log_x_when_times_spread():
    ax = tradeoff_figure([("fast", row(0.9, 0.5, 5.0)), ("slow", row(0.9, 0.6, 500.0))]).axes[0]
    assert ax.get_xscale() == "log"


def test_tradeoff_rows_without_train_time_sit_at_zero():
    fig = tradeoff_figure([("old", row(0.9, 0.5, None)), ("new", row(0.8, 0.6, 30.0))])
    ax = fig.axes[0]
    assert close(scatter_points(ax)["clean"], [(0, 90), (30, 80)])
    assert fig.texts[0].get_text().startswith("1  old (no train time)")
    assert "x = 0: no train time" in [t.get_text() for t in ax.get_legend().get_texts()]
    spread = tradeoff_figure([("old", row(0.9, 0.5, None)), ("a", row(0.9, 0.5, 2.0)),
                              ("b", row(0.9, 0.5, 200.0))]).axes[0]
    assert spread.get_xscale() == "symlog"  # log beyond the shortest time, x = 0 still on the axis


def test_tradeoff_without_rows():
    assert tradeoff_figure([]) is None


# ------------------------------------------------------------------------------------ files
def test_save_png_writes_atomically(tmp_path):
    target = tmp_path / "figures" / "deep" / "robustness.png"
    out = save_png(robustness_figure(make_results()), target)
    assert out == target and target.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in target.parent.iterdir()) == ["robustness.png"]
    save_png(tradeoff_figure([("a", row(0.9, 0.5, 3.0))]), target)  # replaces the file
    assert sorted(p.name for p in target.parent.iterdir()) == ["robustness.png"]


def test_save_png_leaves_no_temp_file_on_failure(tmp_path):
    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_png(Broken(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_module_imports_no_torch_ray_or_mlflow_and_no_pyplot():
    tree = ast.parse(inspect.getsource(figures))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"torch", "ray", "mlflow"}
    assert "matplotlib.pyplot" not in imported
