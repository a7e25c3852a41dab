"""The per-example worst case per threat model: cascade, headline, CW distortion, tables, metrics."""

from __future__ import annotations

import pytest
from test_evaluation import _trained_linear

from rkd.attacks import build_attack
from rkd.config import load_config
from rkd.config.numbers import format_eps
from rkd.config.schema import AttackConfig, WorstCaseConfig
from rkd.data import make_synthetic
from rkd.data.loader import make_loader
from rkd.evaluation import comparison_table, evaluate, results_markdown
from rkd.evaluation.metric_names import ROBUST, accuracy_metrics, metric_for_label, worst_case_metric
from rkd.evaluation.robust_accuracy import correct_mask
from rkd.evaluation.worst_case import grid_threats, headline_threat

# deterministic attacks (no random start), so that attacking a subset gives exactly what
# attacking every point gives
GRID = ["{kind: fgsm, eps: 0.1}", "{kind: pgd, eps: 0.1, steps: 3, random_start: false}",
        "{kind: pgd, norm: l2, eps: 2.0, steps: 3, random_start: false}"]
SUITE = "[{kind: pgd, steps: 10, random_start: false}, {kind: mifgsm, steps: 10}]"
CHEAP = ["eval.checks.enabled=false"]
LINF, L2 = format_eps(0.1, "linf"), format_eps(2.0, "l2")


@pytest.fixture(scope="module")
def setup():
    return _trained_linear(make_synthetic(True, n_train=200, seed=1)), make_synthetic(False, n_test=80, seed=1)


def _eval_cfg(extra=()):
    return load_config(None, [f"eval.attacks=[{', '.join(GRID)}]", f"eval.worst_case.suite={SUITE}", *CHEAP,
                              *extra]).eval


def test_worst_case_is_below_every_attack_in_its_ball(setup):
    model, test = setup
    res = evaluate(model, test, _eval_cfg(), device="cpu", batch_size=32)
    worst = {(w["norm"], w["eps_label"]): w for w in res["worst_case"]}
    assert set(worst) == {("linf", LINF), ("l2", L2)}
    for a in res["attacks"]:
        assert worst[(a["norm"], a["eps_label"])]["accuracy"] <= a["accuracy"]
    linf = worst[("linf", LINF)]
    assert linf["attacks"] == [f"FGSM {LINF}", f"PGD-3 Linf {LINF}", f"PGD-10 Linf {LINF}", f"mifgsm linf {LINF}"]
    assert [c["name"] for c in linf["cascade"]] == [f"PGD-10 Linf {LINF}", f"mifgsm linf {LINF}"]
    # L2 ball: MI-FGSM is an Linf attack, so only the PGD of the suite runs there
    assert [c["name"] for c in worst[("l2", L2)]["cascade"]] == [f"PGD-10 L2 {L2}"]
    assert linf["cascade"][-1]["robust_after"] == linf["accuracy"]
    assert 0 < linf["accuracy"] < res["clean_accuracy"]
    assert res["headline"] == {"norm": "linf", "eps": linf["eps"], "eps_label": LINF,
                               "accuracy": linf["accuracy"], "suite": "custom"}


def test_cascade_equals_every_attack_on_every_point(setup):
    model, test = setup
    cfg = _eval_cfg()
    res = evaluate(model, test, cfg, device="cpu", batch_size=32)
    loader = make_loader(test, 32)
    threat = ("linf", 0.1)
    attacks = [a for a in cfg.attacks if a.threat == threat] + cfg.worst_case.suite_attacks(*threat)
    every = correct_mask(model, loader, "cpu")
    for a in attacks:
        every &= correct_mask(model, loader, "cpu", build_attack(a.kind, **a.attack_params()))
    wc = next(w for w in res["worst_case"] if w["norm"] == "linf")
    assert wc["accuracy"] == pytest.approx(every.float().mean().item())
    # the cascade attacked only points still robust: fewer than all after the grid
    assert wc["cascade"][0]["ran_on"] < len(test)
    assert wc["cascade"][1]["ran_on"] <= wc["cascade"][0]["ran_on"]


def test_threats_default_to_the_grid_balls_and_can_be_given():
    cfg = load_config(None, []).eval
    assert grid_threats(cfg) == [("linf", 4 / 255), ("linf", 8 / 255), ("l2", 0.25), ("l2", 0.5)]
    assert headline_threat(grid_threats(cfg)) == ("linf", 8 / 255)
    assert headline_threat([("l2", 0.5), ("l2", 0.25)]) == ("l2", 0.5)
    given = load_config(None, ["eval.worst_case.threats=[{norm: l2, eps: 1.0}]"]).eval
    assert grid_threats(given) == [("l2", 1.0)]


def test_reference_suite_is_autoattack_standard():
    labels = [a.label for a in WorstCaseConfig().suite_attacks("linf", 8 / 255)]
    assert labels == ["APGD-CE-100 Linf 8/255", "APGD-T9-100 Linf 8/255", "FAB-T9-100 Linf 8/255",
                      "Square-5000 Linf 8/255"]
    fast = [a.label for a in WorstCaseConfig(suite="fast").suite_attacks("l2", 0.5)]
    assert all(label.startswith("APGD-") for label in fast)


def test_suite_attacks_take_norm_and_eps_from_the_threat():
    with pytest.raises(ValueError, match="each threat gives them"):
        load_config(None, ["eval.worst_case.suite=[{kind: pgd, eps: 0.1}]"])
    with pytest.raises(ValueError, match="unbounded"):
        load_config(None, ["eval.worst_case.suite=[{kind: cw}]"])


def test_cw_defaults_to_100_steps_and_records_its_distortion(setup):
    model, test = setup
    assert AttackConfig(kind="cw").steps == 100 and AttackConfig(kind="apgd").steps == 100
    assert AttackConfig(kind="pgd").steps == 7 and AttackConfig(kind="fgsm").steps is None
    cfg = load_config(None, ["eval.attacks=[{kind: cw, steps: 20, lr: 0.05}]", *CHEAP]).eval
    res = evaluate(model, test, cfg, device="cpu", batch_size=32)
    (cw,) = res["attacks"]
    assert cw["norm"] is None and cw["eps"] is None and cw["eps_label"] is None
    assert cw["accuracy"] < res["clean_accuracy"]
    assert cw["median_l2_distortion"] > 0
    assert res["worst_case"] == [] and res["headline"] is None  # CW is in no ball


def test_tables_metrics_and_tags_carry_the_worst_case(setup):
    from rkd.tracking.mlflow_tracker import result_tags

    model, test = setup
    res = evaluate(model, test, _eval_cfg(), device="cpu", batch_size=32)
    table = comparison_table([("m", res)])
    head = table.splitlines()[0]
    assert head.index(f"worst case Linf {LINF}") < head.index(f"FGSM {LINF}")
    assert "masking flags" not in head  # checks disabled
    md = results_markdown(res)
    assert "Per-example worst case" in md
    metrics = accuracy_metrics(res)
    wc = next(w for w in res["worst_case"] if w["norm"] == "linf")
    assert metrics[worst_case_metric("linf", LINF)] == pytest.approx(100 * wc["accuracy"]) == metrics[ROBUST]
    assert metric_for_label("worst case Linf 8/255") == worst_case_metric("linf", "8/255")
    assert metric_for_label("robust") == ROBUST
    assert result_tags(res) == {"rkd.masking_flags": "not checked",
                                "rkd.headline": f"worst case Linf {LINF} (suite custom)"}
