"""The over-seeds table: mean and sample std per configuration, seeds named, flags counted."""

from __future__ import annotations

import statistics

from rkd.evaluation.seed_table import group_by_config, seed_table


def _results(name, seed, clean, pgd, worst, flags=(), time=10.0):
    return {"run": {"name": name, "seed": seed}, "clean_accuracy": clean, "num_samples": 100,
            "attacks": [{"name": "PGD-7 Linf 8/255", "protocol": "white-box", "accuracy": pgd}],
            "worst_case": [{"norm": "linf", "eps_label": "8/255", "accuracy": worst}],
            "checks": [], "flags": list(flags), "train_wall_time_s": time}


def test_seed_table_gives_mean_and_sample_std_per_configuration():
    rows = [("a-0", _results("a", 0, 0.90, 0.50, 0.40)), ("b-0", _results("b", 0, 0.80, 0.30, 0.20, ["x"])),
            ("a-1", _results("a", 1, 0.94, 0.54, 0.46, time=14.0)), ("a-2", _results("a", 2, 0.92, 0.52, 0.43))]
    table = seed_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| method | seeds | clean | worst case Linf 8/255 | PGD-7 Linf 8/255 | flagged | train time |"
    a = next(line for line in lines if line.startswith("| a |"))
    sd = 100 * statistics.stdev([0.40, 0.46, 0.43])
    assert f"| a | 0, 1, 2 | 92.0 ± 2.0 | 43.0 ± {sd:.1f} | 52.0 ± 2.0 | 0/3 | 11.3 ± 2.3 s |" == a
    b = next(line for line in lines if line.startswith("| b |"))
    assert b == "| b | 0 | 80.0 | 20.0 | 30.0 | 1/1 (x) | 10.0 s |"  # one seed: no spread to show


def test_group_by_config_keeps_first_seen_order_and_falls_back_to_the_label():
    rows = [("r2", {"run": {"name": "z"}}), ("r1", {"run": {}}), ("r3", {"run": {"name": "z"}})]
    assert list(group_by_config(rows)) == ["z", "r1"] and len(group_by_config(rows)["z"]) == 2


def test_columns_carry_the_protocol_when_any_row_has_two():
    plain = _results("a", 0, 0.9, 0.5, 0.4)
    both = _results("b", 0, 0.9, 0.6, 0.4)
    both["attacks"].append({"name": "FGSM 8/255", "protocol": "transfer", "accuracy": 0.7})
    head = seed_table([("a", plain), ("b", both)]).splitlines()[0]
    assert "PGD-7 Linf 8/255 (white-box)" in head and "FGSM 8/255 (transfer)" in head
    assert "| PGD-7 Linf 8/255 |" not in head  # one column per attack, not one per labelling


def test_step_sweep_points_are_columns_and_seeds_are_listed_in_order():
    """Robust-KD's Figures 4-5 over seeds: each step count of the step sweep is a column (0 steps,
    the clean accuracy, is not), and a configuration's seeds are listed in numeric order
    whatever order its runs come in."""
    def swept(seed, acc25):
        r = _results("a", seed, 0.9, 0.5, 0.4)
        r["step_sweep"] = {"norm": "l2", "eps": 0.5, "eps_label": "0.5",
                           "points": [{"steps": 0, "accuracy": 0.9}, {"steps": 25, "accuracy": acc25}]}
        return r

    lines = seed_table([("x", swept(10, 0.30)), ("y", swept(2, 0.40))]).splitlines()
    assert lines[0].split(" | ")[-3:] == ["PGD-25 L2 0.5 (step sweep)", "flagged", "train time |"]
    assert "PGD-0 " not in lines[0]
    assert lines[2].startswith("| a | 2, 10 | ") and "| 35.0 ± 7.1 |" in lines[2]
