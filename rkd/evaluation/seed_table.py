"""A comparison table over seeds: one row per configuration (``results["run"]["name"]``), each
cell the mean and sample standard deviation over that configuration's seeds, with the seeds
named -- so that a difference between two rows can be read against their spread.

Columns as :func:`rkd.evaluation.results.comparison_table`: clean, the worst case per threat
(the headline), each attack (white-box and transfer), the PGD step sweep's points (Robust-KD's
Figures 4-5, ``PGD-<k> <ball> (step sweep)``), the train time; plus how many seeds' masking
checks raised a flag, and which flags.
"""

from __future__ import annotations

import statistics

from rkd.evaluation.metric_names import ball_label, worst_case_label
from rkd.evaluation.table_formats import markdown


def column_values(r: dict, protocols: set[str]) -> dict[str, float]:
    """``{column: accuracy}`` of one results dict: clean, each worst case, each attack of
    ``protocols`` (those of every row of a table; attack columns carry their protocol when
    there is more than one), and each point of the step sweep but its 0 steps (the clean
    accuracy) as ``PGD-<k> <ball> (step sweep)``."""
    out = {"clean": r["clean_accuracy"]}
    out.update({worst_case_label(w["norm"], w["eps_label"]): w["accuracy"] for w in r.get("worst_case") or []})
    for a in r["attacks"]:
        if a["protocol"] in protocols:
            out[a["name"] if protocols == {"white-box"} else f"{a['name']} ({a['protocol']})"] = a["accuracy"]
    sweep = r.get("step_sweep")
    if sweep:
        ball = ball_label(sweep["norm"], sweep["eps_label"])
        out.update({f"PGD-{p['steps']} {ball} (step sweep)": p["accuracy"] for p in sweep["points"] if p["steps"]})
    return out


def _cell(xs: list[float], scale: float = 100.0, unit: str = "") -> str:
    if not xs:
        return ""
    mean = scale * statistics.fmean(xs)
    if len(xs) == 1:
        return f"{mean:.1f}{unit}"
    return f"{mean:.1f} ± {scale * statistics.stdev(xs):.1f}{unit}"


def group_by_config(rows: list[tuple[str, dict]], by: str = "config") -> dict[str, list[dict]]:
    """Results by configuration name (``by="config"``, else the row's label), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for label, r in rows:
        key = label if by == "label" else r.get("run", {}).get("name") or label
        groups.setdefault(key, []).append(r)
    return groups


def _seed_order(r: dict) -> tuple[bool, int]:
    seed = r.get("run", {}).get("seed")
    return seed is None, seed if isinstance(seed, int) else 0


def seed_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown: mean ± sample std (%) over the seeds of each configuration."""
    return markdown(*seed_grid(rows))


def seed_grid(rows: list[tuple[str, dict]], by: str = "config") -> tuple[list[str], list[list[str]]]:
    """``(header, rows of cells)``: mean ± sample std (%) over the seeds of each configuration
    (``by``: as :func:`group_by_config`)."""
    groups = group_by_config(rows, by)
    protocols = {a["protocol"] for _, r in rows for a in r["attacks"]}
    cols: list[str] = []
    for rs in groups.values():
        for r in rs:
            cols += [c for c in column_values(r, protocols) if c not in cols]
    head = ["method", "seeds"] + cols + ["flagged", "train time"]
    body = []
    for name, rs in groups.items():
        rs = sorted(rs, key=_seed_order)
        values = [column_values(r, protocols) for r in rs]
        seeds = ", ".join(str(r.get("run", {}).get("seed", "?")) for r in rs)
        flagged = [r for r in rs if r.get("flags")]
        names = sorted({f for r in flagged for f in r["flags"]})
        times = [r["train_wall_time_s"] for r in rs if r.get("train_wall_time_s") is not None]
        cells = ([name, seeds] + [_cell([v[c] for v in values if c in v]) for c in cols]
                 + [f"{len(flagged)}/{len(rs)}" + (f" ({', '.join(names)})" if names else ""),
                    _cell(times, 1.0, " s")])
        body.append(cells)
    return head, body
