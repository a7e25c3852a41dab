"""rkd.evaluation.curves (the robustness curves of one results dict) and the MLflow stepped
metrics drawn from them (rkd.evaluation.metric_names.stepped_metrics)."""

from __future__ import annotations

import ast
import inspect

import pytest

from rkd.evaluation import curves as curves_module
from rkd.evaluation.curves import Curve, eps_curves, family_label, steps_curves
from rkd.evaluation.metric_names import stepped_metrics

EPS4, EPS8, EPS16 = 4 / 255, 8 / 255, 16 / 255


def attack(name: str, kind: str, norm: str | None, eps: float | None, eps_label: str | None, steps: int | None,
           accuracy: float, protocol: str = "white-box", source_model: str | None = None) -> dict:
    """An ``attacks[]`` entry of results.json (the keys the curves read)."""
    return {"name": name, "kind": kind, "norm": norm, "eps": eps, "eps_label": eps_label, "steps": steps,
            "restarts": 1, "protocol": protocol, "source_model": source_model, "accuracy": accuracy}


def worst(norm: str, eps: float, eps_label: str, accuracy: float) -> dict:
    return {"norm": norm, "eps": eps, "eps_label": eps_label, "accuracy": accuracy, "suite": "fast"}


def series(source: str, points: list[tuple[int, float]], norm: str = "linf", eps: float = EPS8, **extra) -> dict:
    """A series of the ``accuracy_falls_with_steps`` check's evidence."""
    return {"source": source, "norm": norm, "eps": eps, **extra,
            "points": [{"steps": k, "accuracy": acc} for k, acc in points]}


def steps_check(*all_series: dict, status: str = "ok") -> dict:
    return {"name": "accuracy_falls_with_steps", "status": status,
            "evidence": {"tolerance": 0.03, "violations": [], "series": list(all_series)}}


def step_sweep(points: list[tuple[int, float]]) -> dict:
    return {"norm": "linf", "eps": EPS8, "eps_label": "8/255",
            "points": [{"steps": k, "step_size": None, "accuracy": acc, "wall_time_s": 1.0} for k, acc in points]}


def results(**changes) -> dict:
    """A results dict after the schema of a real digits run (the keys the curves read)."""
    base = {"schema": "rkd.results/1", "clean_accuracy": 0.9, "attacks": [], "worst_case": [], "step_sweep": None,
            "checks": None}
    return {**base, **changes}


def as_tuples(curves: list[Curve]) -> list[tuple]:
    return [(c.label, c.norm, c.protocol, c.source, c.points) for c in curves]


# --------------------------------------------------------------------------------- family label
@pytest.mark.parametrize(("name", "norm", "eps_label", "family"), [
    ("PGD-7 Linf 8/255", "linf", "8/255", "PGD-7 Linf"),
    ("PGD-7 L2 0.5", "l2", "0.5", "PGD-7 L2"),
    ("FGSM 8/255", "linf", "8/255", "FGSM Linf"),  # the norm added where the name lacks it
    ("APGD-T3-50 Linf 8/255", "linf", "8/255", "APGD-T3-50 Linf"),
    ("strong one", "linf", "16/255", "strong one Linf"),  # a custom name without its eps
])
def test_family_label(name, norm, eps_label, family):
    assert family_label(attack(name, "pgd", norm, 0.1, eps_label, 7, 0.5)) == family


# ------------------------------------------------------------------------------------- eps curves
def test_eps_curves_group_attacks_by_kind_norm_steps_and_protocol():
    r = results(attacks=[
        attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.7),
        attack("PGD-7 Linf 8/255", "pgd", "linf", EPS8, "8/255", 7, 0.6),
        attack("PGD-7 L2 0.5", "pgd", "l2", 0.5, "0.5", 7, 0.75),
        attack("FGSM 4/255", "fgsm", "linf", EPS4, "4/255", 1, 0.8),
        attack("PGD-7 Linf 4/255", "pgd", "linf", EPS4, "4/255", 7, 0.75),
        attack("PGD-20 Linf 8/255", "pgd", "linf", EPS8, "8/255", 20, 0.55),
        attack("PGD-7 L2 0.25", "pgd", "l2", 0.25, "0.25", 7, 0.85),
        attack("FGSM 8/255", "fgsm", "linf", EPS8, "8/255", 1, 0.85, "transfer", "digits-standard"),
        attack("FGSM 16/255", "fgsm", "linf", EPS16, "16/255", 1, 0.8, "transfer", "digits-standard"),
    ])
    assert as_tuples(eps_curves(r)) == [
        ("FGSM Linf", "linf", "white-box", None, [(0.0, 0.9), (EPS4, 0.8), (EPS8, 0.7)]),
        ("PGD-7 Linf", "linf", "white-box", None, [(0.0, 0.9), (EPS4, 0.75), (EPS8, 0.6)]),
        ("PGD-7 L2", "l2", "white-box", None, [(0.0, 0.9), (0.25, 0.85), (0.5, 0.75)]),
        ("PGD-20 Linf", "linf", "white-box", None, [(0.0, 0.9), (EPS8, 0.55)]),  # other steps: other family
        ("FGSM Linf", "linf", "transfer", "digits-standard", [(0.0, 0.9), (EPS8, 0.85), (EPS16, 0.8)]),
    ]


def test_eps_curves_skip_cw_and_eps_zero_and_keep_transfer_sources_apart():
    r = results(attacks=[
        attack("CW c=1", "cw", None, None, None, 100, 0.01),
        attack("PGD-7 Linf 0/255", "pgd", "linf", 0.0, "0/255", 7, 0.88),
        attack("PGD-7 Linf 8/255", "pgd", "linf", EPS8, "8/255", 7, 0.6),
        attack("PGD-20 Linf 8/255", "pgd", "linf", EPS8, "8/255", 20, 0.8, "transfer", "a"),
        attack("PGD-20 Linf 8/255", "pgd", "linf", EPS8, "8/255", 20, 0.7, "transfer", "b"),
    ])
    assert as_tuples(eps_curves(r)) == [
        ("PGD-7 Linf", "linf", "white-box", None, [(0.0, 0.9), (EPS8, 0.6)]),  # one point at eps 0: clean
        ("PGD-20 Linf", "linf", "transfer", "a", [(0.0, 0.9), (EPS8, 0.8)]),
        ("PGD-20 Linf", "linf", "transfer", "b", [(0.0, 0.9), (EPS8, 0.7)]),
    ]
    assert eps_curves(results(attacks=[attack("CW c=1", "cw", None, None, None, 100, 0.01)])) == []


def test_eps_curves_worst_case_per_norm_from_the_clean_point():
    r = results(clean_accuracy=0.95, worst_case=[
        worst("linf", EPS8, "8/255", 0.5), worst("l2", 0.5, "0.5", 0.7), worst("linf", EPS4, "4/255", 0.7)])
    assert as_tuples(eps_curves(r)) == [
        ("worst case Linf", "linf", "worst case", None, [(0.0, 0.95), (EPS4, 0.7), (EPS8, 0.5)]),
        ("worst case L2", "l2", "worst case", None, [(0.0, 0.95), (0.5, 0.7)]),
    ]


def test_eps_curve_points_are_sorted_floats():
    r = results(attacks=[attack(f"FGSM {k}/255", "fgsm", "linf", k / 255, f"{k}/255", 1, 1 - k / 20)
                         for k in (16, 2, 8, 4)])
    (curve,) = eps_curves(r)
    assert [e * 255 for e, _ in curve.points] == pytest.approx([0, 2, 4, 8, 16])
    assert curve.points == sorted(curve.points)
    assert all(isinstance(v, float) for point in curve.points for v in point)


# ----------------------------------------------------------------------------------- steps curves
def test_steps_curves_from_the_step_sweep():
    (curve,) = steps_curves(results(step_sweep=step_sweep([(7, 0.6), (0, 0.9), (50, 0.55), (1, 0.7)])))
    assert (curve.label, curve.norm, curve.protocol) == ("PGD Linf 8/255", "linf", "white-box")
    assert curve.points == [(0, 0.9), (1, 0.7), (7, 0.6), (50, 0.55)]


def test_steps_curves_from_the_masking_check_without_duplicates():
    check = steps_check(
        series("grid", [(20, 0.58), (7, 0.6)]),
        series("grid, 3 restarts", [(7, 0.59), (20, 0.57)]),
        series("step_sweep", [(0, 0.9), (1, 0.7), (7, 0.6), (50, 0.55)]),  # the sweep again
        series("subset probe", [(50, 0.66), (7, 0.7), (10, 0.68)], num_samples=100),
        series("subset probe", [(7, 0.6), (50, 0.5)], norm="l2", eps=0.5, num_samples=80),
    )
    r = results(step_sweep=step_sweep([(0, 0.9), (1, 0.7), (7, 0.6), (50, 0.55)]), checks=[check])
    assert [(c.label, c.norm, c.points) for c in steps_curves(r)] == [
        ("PGD Linf 8/255", "linf", [(0, 0.9), (1, 0.7), (7, 0.6), (50, 0.55)]),
        ("grid PGD Linf 8/255", "linf", [(7, 0.6), (20, 0.58)]),
        ("grid PGD Linf 8/255 with 3 restarts", "linf", [(7, 0.59), (20, 0.57)]),
        ("probe PGD Linf 8/255 on 100 images", "linf", [(7, 0.7), (10, 0.68), (50, 0.66)]),
        ("probe PGD L2 0.5 on 80 images", "l2", [(7, 0.6), (50, 0.5)]),
    ]


def test_steps_curves_need_two_step_counts_and_a_run_check():
    one_point = results(step_sweep=step_sweep([(0, 0.9)]), checks=[steps_check(
        series("subset probe", [(7, 0.7)], num_samples=100), series("grid", [(7, 0.6), (7, 0.6)]))])
    assert steps_curves(one_point) == []
    probe = series("subset probe", [(7, 0.7), (50, 0.6)], num_samples=100)
    assert steps_curves(results(checks=[steps_check(probe, status="skipped")])) == []
    other = {**steps_check(probe), "name": "accuracy_falls_with_eps"}
    assert steps_curves(results(checks=[other])) == []
    assert [c.label for c in steps_curves(results(checks=[steps_check(probe)]))] == [
        "probe PGD Linf 8/255 on 100 images"]
    assert steps_curves(results()) == []


# ------------------------------------------------------------------------------- stepped metrics
def test_stepped_metrics_names_percent_values_and_steps():
    r = results(
        attacks=[attack("PGD-7 Linf 4/255", "pgd", "linf", EPS4, "4/255", 7, 0.75),
                 attack("PGD-7 Linf 8/255", "pgd", "linf", EPS8, "8/255", 7, 0.6),
                 attack("PGD-7 L2 0.25", "pgd", "l2", 0.25, "0.25", 7, 0.85),
                 attack("PGD-7 L2 0.5", "pgd", "l2", 0.5, "0.5", 7, 0.75),
                 attack("FGSM 16/255", "fgsm", "linf", EPS16, "16/255", 1, 0.8, "transfer", "digits-standard"),
                 attack("CW c=1", "cw", None, None, None, 100, 0.01)],
        worst_case=[worst("linf", EPS8, "8/255", 0.55)],
        step_sweep=step_sweep([(0, 0.9), (7, 0.6), (50, 0.5)]),
        checks=[steps_check(series("subset probe", [(7, 0.7), (10, 0.68)], num_samples=100))],
    )
    points = stepped_metrics(r)
    got = {(name, step): value for name, value, step in points}
    assert len(got) == len(points)  # one value per metric and step
    assert got == pytest.approx({
        ("robust/vs-eps x255/PGD-7 Linf", 0): 90.0,  # eps 0 = clean
        ("robust/vs-eps x255/PGD-7 Linf", 4): 75.0,  # Linf: step = eps in 1/255
        ("robust/vs-eps x255/PGD-7 Linf", 8): 60.0,
        ("robust/vs-eps x100/PGD-7 L2", 0): 90.0,
        ("robust/vs-eps x100/PGD-7 L2", 25): 85.0,  # L2: step = 100 eps
        ("robust/vs-eps x100/PGD-7 L2", 50): 75.0,
        ("robust/vs-eps x255/FGSM Linf transfer", 0): 90.0,
        ("robust/vs-eps x255/FGSM Linf transfer", 16): 80.0,
        ("robust/vs-eps x255/worst case Linf", 0): 90.0,
        ("robust/vs-eps x255/worst case Linf", 8): 55.0,
        ("robust/vs-steps/PGD Linf 8-255", 0): 90.0,  # step = PGD steps, 0 = clean
        ("robust/vs-steps/PGD Linf 8-255", 7): 60.0,
        ("robust/vs-steps/PGD Linf 8-255", 50): 50.0,
        ("robust/vs-steps/probe PGD Linf 8-255 on 100 images", 7): 70.0,
        ("robust/vs-steps/probe PGD Linf 8-255 on 100 images", 10): 68.0,
    })
    assert all(isinstance(step, int) for _, _, step in points)


def test_stepped_metrics_of_nothing():
    assert stepped_metrics(results()) == []


def test_curves_module_imports_no_torch_ray_or_mlflow():
    tree = ast.parse(inspect.getsource(curves_module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported} & {"torch", "ray", "mlflow", "matplotlib"}
