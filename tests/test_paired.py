"""Paired comparison of two seed-table rows (rkd/evaluation/paired.py): per-seed differences,
their mean and sample std, and scipy's paired t-test over exactly the same seeds."""

from __future__ import annotations

import math

import pytest
from scipy.stats import ttest_rel

from rkd.evaluation.paired import paired_comparison, paired_line, row_metrics


def test_differences_mean_std_and_p_value_by_hand_and_against_scipy():
    a = {2: 85.0, 0: 80.0, 1: 82.0}  # any order: paired by seed
    b = {0: 79.0, 1: 82.5, 2: 83.0}
    c = paired_comparison(a, b, a_name="rkd", b_name="shafahi", metric="worst case Linf 8/255")
    assert c.seeds == (0, 1, 2) and c.differences == (1.0, -0.5, 2.0)
    assert c.mean == pytest.approx(2.5 / 3)
    dev = [d - 2.5 / 3 for d in (1.0, -0.5, 2.0)]
    assert c.std == pytest.approx(math.sqrt(sum(x * x for x in dev) / 2))  # sample std (n - 1)
    t = c.mean / (c.std / math.sqrt(3))
    expected = ttest_rel([80.0, 82.0, 85.0], [79.0, 82.5, 83.0])
    assert expected.statistic == pytest.approx(t) and c.p_value == pytest.approx(expected.pvalue)
    line = paired_line(c)
    assert line.startswith("paired rkd - shafahi, worst case Linf 8/255 (seeds 0, 1, 2): per seed +1.00, -0.50, +2.00")
    assert "mean +0.83 points, sample std 1.26" in line and f"p = {expected.pvalue:.3g}" in line


def test_seeds_that_do_not_match_or_fewer_than_two_are_errors():
    with pytest.raises(ValueError, match=r"same seeds: A has \[0, 1, 2\], B has \[0, 1\]"):
        paired_comparison({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0})
    with pytest.raises(ValueError, match="at least two seeds"):
        paired_comparison({0: 1.0}, {0: 2.0})


def test_all_zero_differences_give_an_undefined_p_value_not_a_warning(recwarn):
    c = paired_comparison({0: 50.0, 1: 60.0}, {0: 50.0, 1: 60.0})
    assert c.mean == 0 and c.std == 0 and math.isnan(c.p_value) and not recwarn.list
    assert "p = undefined" in paired_line(c)


def test_row_metrics_reads_every_column_of_a_results_file_in_percent():
    results = {"clean_accuracy": 0.9,
               "attacks": [{"name": "PGD-7 Linf 8/255", "protocol": "white-box", "accuracy": 0.5},
                           {"name": "FGSM 8/255", "protocol": "transfer", "accuracy": 0.7}],
               "worst_case": [{"norm": "linf", "eps_label": "8/255", "accuracy": 0.4}],
               "step_sweep": {"norm": "l2", "eps": 0.5, "eps_label": "0.5",
                              "points": [{"steps": 0, "accuracy": 0.9}, {"steps": 25, "accuracy": 0.6}]}}
    assert row_metrics(results) == pytest.approx({"clean": 90.0, "worst case Linf 8/255": 40.0,
                                                  "PGD-7 Linf 8/255": 50.0, "PGD-25 L2 0.5 (step sweep)": 60.0})
