"""`rkd export`: a finished run directory (written by hand here) as a RobustBench-style entry."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from rkd.cli import main
from rkd.config import load_config, save_config
from rkd.config.identity import identity_key
from rkd.evaluation.export import ExportError, parse_threat, robustbench_entry, training_data_sources
from rkd.evaluation.results import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def _grid(cfg) -> list[dict]:
    """results.json attack entries for the config's grid (made-up accuracies, falling with eps)."""
    acc = {"FGSM 4/255": 0.8278, "FGSM 8/255": 0.5944, "PGD-7 L2 0.25": 0.9444, "PGD-7 L2 0.5": 0.8306,
           "PGD-7 Linf 4/255": 0.8028, "PGD-7 Linf 8/255": 0.4083, "CW c=1": 0.05}
    out = []
    for a in cfg.eval.attacks:
        params = {"norm": a.norm, "eps": a.eps, "steps": a.steps}
        out.append({"name": a.label, "kind": a.kind, "norm": a.norm, "eps": a.eps, "eps_label": "",
                    "steps": a.steps, "step_size": None, "restarts": None, "protocol": "white-box",
                    "source_model": None, "accuracy": acc[a.label], "wall_time_s": 1.0, "params": params})
    return out


def _worst(norm, eps, label, accuracy, suite, counted, cascade) -> dict:
    return {"norm": norm, "eps": eps, "eps_label": label, "accuracy": accuracy, "num_samples": 360, "suite": suite,
            "attacks": counted + [c["name"] for c in cascade], "cascade": cascade, "wall_time_s": 12.5}


def _apgd(name, loss, targets, eps, norm, ran_on, after, steps=100) -> dict:
    return {"name": name, "kind": "apgd", "params": {"norm": norm, "eps": eps, "steps": steps, "loss": loss,
                                                     "targets": targets, "restarts": 1},
            "ran_on": ran_on, "robust_after": after, "wall_time_s": 3.0}


WORST_CASE = [
    _worst("linf", 4 / 255, "4/255", 0.7917, "autoattack", ["FGSM 4/255", "PGD-7 Linf 4/255"],
           [_apgd("APGD-CE Linf 4/255", "ce", 0, 4 / 255, "linf", 289, 0.7944),
            _apgd("APGD-T Linf 4/255", "dlr", 9, 4 / 255, "linf", 286, 0.7917),
            {"name": "FAB-T Linf 4/255", "kind": "fab", "params": {"norm": "linf", "eps": 4 / 255, "targets": 9},
             "ran_on": 285, "robust_after": 0.7917, "wall_time_s": 4.0},
            {"name": "Square-5000 Linf 4/255", "kind": "square", "params": {"norm": "linf", "eps": 4 / 255,
                                                                            "n_queries": 5000},
             "ran_on": 285, "robust_after": 0.7917, "wall_time_s": 9.0}]),
    _worst("linf", 8 / 255, "8/255", 0.3722, "autoattack", ["FGSM 8/255", "PGD-7 Linf 8/255"],
           [_apgd("APGD-CE Linf 8/255", "ce", 0, 8 / 255, "linf", 147, 0.3778),
            _apgd("APGD-T Linf 8/255", "dlr", 9, 8 / 255, "linf", 136, 0.3722)]),
    _worst("l2", 0.5, "0.5", 0.8111, "fast", ["PGD-7 L2 0.5"],
           [_apgd("APGD-CE L2 0.5", "ce", 0, 0.5, "l2", 299, 0.8139, steps=50),
            _apgd("APGD-T L2 0.5", "dlr", 3, 0.5, "l2", 293, 0.8111, steps=50)]),
]

CHECKS = [
    {"name": "accuracy_falls_with_eps", "status": "ok", "evidence": {"rises": []},
     "description": "accuracy must not rise with eps", "reference": "Carlini et al. 2019, 5.5"},
    {"name": "black_box_beats_white_box", "status": "flagged",
     "evidence": {"broken_by_square": 12, "subset": 100, "threat": "linf:8/255"},
     "description": "Square breaks points the white-box attacks left robust", "reference": "Carlini et al. 2019, 5.4"},
    {"name": "vanishing_gradients", "status": "skipped", "evidence": {"reason": "no input_gradient"},
     "description": "input gradients must not vanish", "reference": "Athalye et al. 2018, 3.1"},
]

SPLITS = {"train": 716, "validation": 0, "test": 360, "validation_source": None, "split_seed": 0}


def write_run(run_dir: Path, cfg, *, worst_case=WORST_CASE, checks=CHECKS, splits=SPLITS, **extra) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    results = {"schema": SCHEMA,
               "run": {"name": cfg.name, "method": cfg.method.name, "arch": cfg.model.arch,
                       "dataset": cfg.data.dataset, "run_dir": str(run_dir), "mlflow_run_id": None},
               "num_samples": 360, "clean_accuracy": 0.96944, "attacks": _grid(cfg), "step_sweep": None,
               "train_wall_time_s": 9.2, "eval_wall_time_s": 40.0, "created": "2026-11-21T10:15:00+00:00", **extra}
    if worst_case is not None:
        results["worst_case"] = worst_case
    if checks is not None:
        results["checks"] = checks
        results["flags"] = [c["name"] for c in checks if c["status"] == "flagged"]
    if splits is not None:
        results["splits"] = splits
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "model.pt").write_bytes(b"not read by export")
    (run_dir / "run.json").write_text(json.dumps({"status": "FINISHED"}))
    return run_dir


@pytest.fixture(scope="module")
def standard_cfg():
    return load_config("preset:digits_standard")


@pytest.fixture
def run(tmp_path, standard_cfg):
    return write_run(tmp_path / "run", standard_cfg)


def test_every_field_of_the_default_entry(run):
    e = robustbench_entry(run)
    assert e["name"] == "digits-standard" and e["method"] == "standard"
    assert e["architecture"] == "resnet18 (width=16, layers=[1, 1, 1, 1])"
    assert e["model"] == {"arch": "resnet18", "width": 16, "layers": [1, 1, 1, 1]}
    assert e["dataset"] == "digits"
    # default: the largest Linf ball
    assert e["threat_model"] == "Linf" and e["eps"] == "8/255" and e["eps_value"] == pytest.approx(8 / 255)
    assert e["clean_acc"] == 96.94
    assert e["autoattack_acc"] == 37.22 and e["worst_case_acc"] == 37.22 and e["worst_case_suite"] == "autoattack"
    assert e["number_samples"] == 360 and e["number_forward_passes"] == 1
    assert e["additional_data"] is False
    assert e["additional_data_sources"] == []  # standard training: no trained model, no pretrained weights
    assert [(a["name"], a["stage"]) for a in e["attacks"]] == [
        ("FGSM 8/255", "grid"), ("PGD-7 Linf 8/255", "grid"),
        ("APGD-CE Linf 8/255", "cascade"), ("APGD-T Linf 8/255", "cascade")]
    grid, apgd_t = e["attacks"][1], e["attacks"][3]
    assert grid["kind"] == "pgd" and grid["params"] == {"norm": "linf", "eps": 8 / 255, "steps": 7}
    assert grid["accuracy"] == 0.4083
    assert apgd_t["kind"] == "apgd" and apgd_t["params"]["loss"] == "dlr" and apgd_t["params"]["targets"] == 9
    assert apgd_t["ran_on"] == 136 and apgd_t["robust_after"] == 0.3722
    assert e["gradient_masking_flags"] == [
        {"name": "black_box_beats_white_box", "evidence": {"broken_by_square": 12, "subset": 100,
                                                           "threat": "linf:8/255"},
         "description": CHECKS[1]["description"], "reference": CHECKS[1]["reference"]}]
    assert e["gradient_masking_checks"] == [{"name": c["name"], "status": c["status"]} for c in CHECKS]
    assert e["unreliable"] is True
    assert "360 test images" in e["footnote"] and "black_box_beats_white_box" in e["footnote"]
    assert e["splits"] == SPLITS
    assert e["rkd_version"] == version("rkd")
    assert e["config_hash"] == identity_key(load_config(str(run / "config.yaml"))) and len(e["config_hash"]) == 64
    assert e["run_dir"] == str(run) and e["evaluated"] == "2026-11-21T10:15:00+00:00"
    assert e["created"].endswith("+00:00")
    assert all(e[k] is None for k in ("link", "authors", "venue", "reported"))
    json.dumps(e)  # plain JSON


def test_config_hash_is_the_identity_key(tmp_path, standard_cfg):
    a = robustbench_entry(write_run(tmp_path / "a", standard_cfg))["config_hash"]
    b = robustbench_entry(write_run(tmp_path / "b", load_config("preset:digits_standard", ["device=cpu"])))
    c = robustbench_entry(write_run(tmp_path / "c", load_config("preset:digits_standard", ["seed=1"])))
    assert b["config_hash"] == a  # where it ran does not change what it trained
    assert c["config_hash"] != a


def test_threat_selection(run):
    l2 = robustbench_entry(run, threat="l2:0.5")
    assert l2["threat_model"] == "L2" and l2["eps"] == "0.5" and l2["eps_value"] == 0.5
    assert l2["worst_case_suite"] == "fast" and l2["autoattack_acc"] is None and l2["worst_case_acc"] == 81.11
    assert [a["name"] for a in l2["attacks"]] == ["PGD-7 L2 0.5", "APGD-CE L2 0.5", "APGD-T L2 0.5"]
    assert l2["attacks"][2]["params"]["steps"] == 50
    small = robustbench_entry(run, threat="Linf:4/255", name="Me2026Distilling")
    assert small["name"] == "Me2026Distilling" and small["eps"] == "4/255" and small["autoattack_acc"] == 79.17
    assert [a["name"] for a in small["attacks"]][-2:] == ["FAB-T Linf 4/255", "Square-5000 Linf 4/255"]
    assert robustbench_entry(run, threat=("linf", 4 / 255))["worst_case_acc"] == 79.17
    assert robustbench_entry(run, threat="linf:0.0156862745")["eps"] == "4/255"  # same eps, decimal
    with pytest.raises(ExportError, match=r"linf:16/255.*linf:4/255, linf:8/255, l2:0.5"):
        robustbench_entry(run, threat="linf:16/255")
    for bad in ("8/255", "linf2:8/255", "l2:abc", "linf:0"):
        with pytest.raises(ExportError, match="NORM:EPS"):
            parse_threat(bad)
    assert parse_threat(" L2 : 0.25 ") == ("l2", 0.25)


def test_without_linf_the_first_threat_is_the_default(tmp_path, standard_cfg):
    l2_only = [dict(WORST_CASE[2], eps=0.25, eps_label="0.25"), WORST_CASE[2]]
    e = robustbench_entry(write_run(tmp_path / "r", standard_cfg, worst_case=l2_only))
    assert e["threat_model"] == "L2" and e["eps"] == "0.25"


def test_an_older_results_file_has_no_checks_or_splits(tmp_path, standard_cfg):
    e = robustbench_entry(write_run(tmp_path / "r", standard_cfg, checks=None, splits=None))
    assert e["gradient_masking_flags"] is None and e["gradient_masking_checks"] is None
    assert e["unreliable"] is None and e["splits"] is None
    clean = robustbench_entry(write_run(tmp_path / "s", standard_cfg,
                                        checks=[dict(c, status="ok") for c in CHECKS]))
    assert clean["gradient_masking_flags"] == [] and clean["unreliable"] is False


def test_runs_that_cannot_be_exported(tmp_path, standard_cfg):
    with pytest.raises(ExportError, match="no worst_case"):
        robustbench_entry(write_run(tmp_path / "old", standard_cfg, worst_case=None))
    with pytest.raises(ExportError, match="no worst_case"):
        robustbench_entry(write_run(tmp_path / "empty", standard_cfg, worst_case=[]))
    unevaluated = write_run(tmp_path / "uneval", standard_cfg)
    (unevaluated / "results.json").unlink()
    with pytest.raises(ExportError, match="no results.json"):
        robustbench_entry(unevaluated)
    (tmp_path / "notrun").mkdir()
    with pytest.raises(ExportError, match="no config.yaml"):
        robustbench_entry(tmp_path / "notrun")
    with pytest.raises(ExportError, match="no such run directory"):
        robustbench_entry(tmp_path / "missing")
    other = write_run(tmp_path / "other", standard_cfg)
    (other / "results.json").write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(ExportError, match="not an rkd results file"):
        robustbench_entry(other)
    assert issubclass(ExportError, ValueError)


def test_additional_data_follows_the_teachers(tmp_path):
    same = robustbench_entry(write_run(tmp_path / "kd", load_config("preset:digits_robust_kd")))
    assert same["method"] == "robust_kd" and same["additional_data"] is False
    assert [(s["role"], s["dataset"], s["half"]) for s in same["additional_data_sources"]] == [
        ("teacher", "digits", "first")]  # the other half of the same dataset is no additional data

    other = load_config("preset:digits_robust_kd", ["method.teacher.overrides=[data.dataset=synthetic]"])
    e = robustbench_entry(write_run(tmp_path / "kd-synth", other))
    assert e["additional_data"] is True and e["additional_data_sources"][0]["dataset"] == "synthetic"

    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    save_config(load_config("preset:digits_teacher_plus", ["data.dataset=synthetic"]), teacher_dir / "config.yaml")
    by_dir = load_config("preset:digits_robust_kd", [f"method.teacher={{run_dir: {teacher_dir}}}"])
    e = robustbench_entry(write_run(tmp_path / "kd-dir", by_dir))
    assert e["additional_data"] is True and e["additional_data_sources"][0]["via"] == "run_dir"

    gone = load_config("preset:digits_robust_kd", [f"method.teacher={{run_dir: {tmp_path / 'nowhere'}}}"])
    e = robustbench_entry(write_run(tmp_path / "kd-gone", gone))
    assert e["additional_data"] is None and e["additional_data_sources"][0]["dataset"] is None


def test_pretrained_weights_are_additional_data(standard_cfg):
    cfg = standard_cfg.model_copy(deep=True)
    cfg.model.pretrained = True
    assert training_data_sources(cfg) == [{"role": "model", "via": "model.pretrained", "dataset": "imagenet"}]
    cfg.model.pretrained, cfg.model.weights_path = None, "weights.pt"
    assert training_data_sources(cfg)[0]["dataset"] is None


def test_cli_writes_prints_and_fails_in_one_line(run, tmp_path, standard_cfg, capsys):
    out = tmp_path / "entry.json"
    assert main(["export", str(run), "--threat", "l2:0.5", "--name", "X", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    written = json.loads(out.read_text())
    assert written["name"] == "X" and written["threat_model"] == "L2" and written["autoattack_acc"] is None

    assert main(["export", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["eps"] == "8/255" and printed["autoattack_acc"] == 37.22

    old = write_run(tmp_path / "old", standard_cfg, worst_case=None)
    assert main(["export", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rkd export: ") and "no worst_case" in err and err.count("\n") == 1
    assert main(["export", str(run), "--threat", "linf:1/255"]) == 2
    assert "no worst case for linf:1/255" in capsys.readouterr().err


def test_the_rkd_command_exports(run):
    proc = subprocess.run([sys.executable, "-m", "rkd.cli", "export", str(run), "--threat", "linf:4/255"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["worst_case_acc"] == 79.17
    help_text = subprocess.run([sys.executable, "-m", "rkd.cli", "--help"], capture_output=True, text=True,
                               timeout=300).stdout
    assert "export" in help_text
