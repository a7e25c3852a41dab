"""Paired comparison of two rows of a seed table: the same seeds, one difference per seed.

Two configurations run with the same seeds share each seed's randomness (data order, random
initialisation, attack starts), so the per-seed difference ``A - B`` removes the spread that the
two rows share, and a paired t-test (:func:`scipy.stats.ttest_rel`) asks whether its mean is
zero::

    c = paired_comparison({0: 3.0, 1: 5.0, 2: 4.0}, {0: 1.0, 1: 4.0, 2: 4.0},
                          a_name="A", b_name="B", metric="worst case Linf 8/255")
    print(paired_line(c))

Values are whatever the caller passes (the tables use accuracy in %, so differences are
percentage points). Pure: no torch, Ray or MLflow. ``jobs/reproduce.py --paired A B`` prints one
line per metric under its table (:func:`paired_line`), with values from each run's results.json
(:func:`row_metrics`).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Mapping

from rkd.evaluation.metric_names import PERCENT
from rkd.evaluation.seed_table import column_values

#: the columns a study compares by default: the headline and the paper's PGD-7 column
DEFAULT_METRICS = ("worst case Linf 8/255", "PGD-7 Linf 8/255")


@dataclass(frozen=True)
class PairedComparison:
    """``a`` minus ``b`` on ``metric`` over ``seeds`` (sorted): the per-seed ``differences``,
    their ``mean``, their sample ``std`` and the two-sided paired t-test's ``p_value`` as
    scipy gives it (NaN when every difference is zero; 0 when they are equal and not zero)."""

    a: str
    b: str
    metric: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    std: float
    p_value: float


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float], *, a_name: str = "A", b_name: str = "B",
                      metric: str = "") -> PairedComparison:
    """Compare ``a`` and ``b`` (``{seed: value}``) seed by seed.

    Raises:
        ValueError: the two rows do not have the same seeds (a paired test pairs them), or fewer
            than two seeds (no spread to test against).
    """
    if set(a) != set(b):
        raise ValueError(f"paired comparison needs the same seeds: {a_name} has {sorted(a)}, {b_name} has {sorted(b)}")
    if len(a) < 2:
        raise ValueError(f"paired comparison needs at least two seeds, got {sorted(a)}")
    seeds = tuple(sorted(a))
    xa, xb = [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]
    diffs = tuple(x - y for x, y in zip(xa, xb))
    return PairedComparison(a_name, b_name, metric, seeds, diffs, statistics.fmean(diffs), statistics.stdev(diffs),
                            _ttest_rel_p(xa, xb))


def _ttest_rel_p(xa: list[float], xb: list[float]) -> float:
    from scipy.stats import ttest_rel

    with warnings.catch_warnings():  # all differences zero: scipy warns and returns NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_rel(xa, xb).pvalue)


def paired_line(c: PairedComparison, unit: str = " points") -> str:
    """One line: ``paired A - B, metric (seeds ...): per seed ...; mean ... ± std, p = ...``."""
    per_seed = ", ".join(f"{d:+.2f}" for d in c.differences)
    p = "undefined (every difference is zero)" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
    return (f"paired {c.a} - {c.b}, {c.metric} (seeds {', '.join(map(str, c.seeds))}): per seed {per_seed}; "
            f"mean {c.mean:+.2f}{unit}, sample std {c.std:.2f}; paired t-test p = {p}")


def row_metrics(results: dict) -> dict[str, float]:
    """``{column: accuracy in %}`` of one results.json: ``clean``, each ``worst case <ball>``,
    each white-box attack by its label, and each step-sweep point as ``PGD-<k> <ball> (step
    sweep)`` (0 steps is the clean accuracy and left out): the seed table's columns."""
    return {k: PERCENT * v for k, v in column_values(results, {"white-box"}).items()}


__all__ = ["DEFAULT_METRICS", "PairedComparison", "paired_comparison", "paired_line", "row_metrics"]
