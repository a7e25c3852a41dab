"""rkd report's row labels: readable labels, roles marked, sweep samples."""

from __future__ import annotations

import json

from rkd.tracking.report import row_label


def test_a_method_row_is_its_readable_label():
    tags = {"rkd.label": "Robust-KD (digits+ -> digits-)", "rkd.role": "method"}
    assert row_label(tags, "digits-robust-kd") == "Robust-KD (digits+ -> digits-)"


def test_rkds_default_label_gives_way_to_the_run_name():
    tags = {"rkd.label": "one: standard on digits, resnet18", "rkd.role": "method"}
    assert row_label(tags, "one") == "one"
    assert row_label({}, "one") == "one"  # no tags (an older run): its name, as a method


def test_other_roles_are_marked():
    tags = {"rkd.label": "robust teacher: AT L2 0.5 on digits+", "rkd.role": "teacher"}
    assert row_label(tags, "digits-teacher") == "robust teacher: AT L2 0.5 on digits+ [teacher]"
    assert row_label({"rkd.role": "mae stage"}, "digits-mae") == "digits-mae [mae stage]"


def test_a_sweep_trial_carries_its_sample_once():
    sample = json.dumps({"train.lr": 0.01})
    assert row_label({"rkd.role": "sweep trial", "rkd.sample": sample}, "t1") == "t1 train.lr=0.01"
    labelled = {"rkd.role": "sweep trial", "rkd.sample": sample, "rkd.label": "s trial t1: train.lr=0.01"}
    assert row_label(labelled, "t1") == "s trial t1: train.lr=0.01"
