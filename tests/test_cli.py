"""End to end through the real `rkd` command: train, eval, quickstart, bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.e2e


def rkd(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "rkd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rkd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_for_every_command(tmp_path):
    outs = {cmd: rkd(*([cmd] if cmd else []), "--help", cwd=tmp_path).stdout
            for cmd in ("", "train", "eval", "quickstart", "tune", "report")}
    assert all(out.startswith("usage: rkd") for out in outs.values())
    assert all(cmd in outs[""] for cmd in ("train", "eval", "quickstart", "tune", "report"))
    assert "--resume" in outs["tune"] and "--workers" in outs["train"] and "--local" in outs["train"]
    assert "digits_standard" in outs["train"] and "--resume" in outs["train"]
    assert "RUN_DIR" in outs["eval"].upper() and "--only" in outs["quickstart"]


def test_every_option_says_what_it_is_and_its_default_and_version_prints():
    """Every argument of every command has a help text, and one with a default says it."""
    import argparse

    from rkd import __version__
    from rkd.cli import build_parser

    def actions(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from actions(sub, [*path, name])
            elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                yield " ".join(path), a

    missing, silent = [], []
    for path, a in actions(build_parser(), ["rkd"]):
        name = f"{path} {'/'.join(a.option_strings) or a.dest}"
        if not a.help:
            missing.append(name)
        elif a.option_strings and a.default not in (None, False) and "default" not in a.help:
            silent.append(name)
    assert not missing and not silent, (missing, silent)
    proc = subprocess.run([sys.executable, "-m", "rkd.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"rkd {__version__}"


def test_train_then_eval_writes_results_and_mlflow_run(tmp_path, tiny_overrides, tracking_uri):
    run_dir = tmp_path / "run"
    # --local: in-process, whatever the config's scaling asks for
    rkd("train", "preset:digits_standard", *tiny_overrides, "scaling.num_workers=2", "--local",
        "--run-dir", str(run_dir), cwd=tmp_path)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["scaling"]["num_workers"] == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema"] == "rkd.results/1" and len(results["attacks"]) == 7  # the grid + CW
    assert 0.0 <= results["clean_accuracy"] <= 1.0
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]

    proc = rkd("eval", str(run_dir), "eval.attacks=[{kind: pgd, norm: l2, eps: 0.5, steps: 3}]",
               "eval.step_sweep={norm: l2, eps: 0.5, steps: [0, 2]}", cwd=tmp_path)
    assert "PGD-3 L2 0.5" in proc.stdout
    again = json.loads((run_dir / "results.json").read_text())
    assert [a["name"] for a in again["attacks"]] == ["PGD-3 L2 0.5"]
    assert again["clean_accuracy"] == pytest.approx(results["clean_accuracy"])  # same weights, same data
    assert again["step_sweep"]["points"][0]["accuracy"] == pytest.approx(results["clean_accuracy"])

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "rkd.ray_workers" not in run.data.tags
    assert "robust/white-box/PGD-3 L2 0.5" not in run.data.metrics  # the re-evaluation is a run of its own
    child = client.get_run(json.loads((run_dir / "run.json").read_text())["last_evaluation"]["mlflow_run_id"])
    assert "robust/white-box/PGD-3 L2 0.5" in child.data.metrics and child.data.tags["mlflow.parentRunId"] == run_id
    assert len(client.get_metric_history(run_id, "train/loss")) == 2
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.json", "results.md", "config.yaml"} <= arts


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  epochs: 0\nmodel:\n  widht: 3\n")
    proc = rkd("train", str(bad), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "train.epochs" in proc.stderr and "model.widht: unknown key" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    proc = rkd("train", "preset:digits_standard", "train.lr=-1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "train.lr" in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith("data.dataset")]
    proc = rkd("train", "preset:digits_standard", *over, "data.dataset=cifar10", f"data.root={tmp_path / 'd'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "cifar-10-batches-py" in proc.stderr and "download" in proc.stderr


def test_quickstart_prints_table_and_nests_runs(tmp_path, tiny_overrides, tracking_uri):
    """A subset of the quickstart end to end: baselines, the cached teacher row, a Robust-KD
    student (which reuses that teacher, not a second one) and defensive distillation (which
    trains its T=20 teacher on the way); one parent MLflow run holds every nested run."""
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + ["eval.jsma.max_samples=8"]
    proc = rkd("quickstart", *over, "adversarial:method.attack.steps=2", "teacher_plus:method.attack.steps=2",
               "--only", "standard", "adversarial", "teacher_plus", "robust_kd", "defensive_distillation",
               "--output-dir", "q", cwd=tmp_path)  # relative: the Tune trials must resolve it as the driver does
    assert "| standard training |" in proc.stdout and "| adversarial training" in proc.stdout
    assert ("| robust teacher: AT L2 0.5 on digits+ |" in proc.stdout
            and "| Robust-KD (digits+ -> digits-) |" in proc.stdout)
    assert "## Defensive distillation" in proc.stdout and "JSMA success (probabilities)" in proc.stdout
    assert f"mlflow ui --backend-store-uri {tracking_uri}" in proc.stdout
    teachers = sorted(p.name for p in (tmp_path / "q" / "teachers").iterdir() if p.is_dir())
    assert len(teachers) == 2 and teachers[0].startswith("digits-dd-teacher-t20-")  # one AT teacher, shared
    summary = next(Path(tmp_path / "q").glob("quickstart-*/summary.json"))
    runs = json.loads(summary.read_text())["runs"]
    rkd_run = next(r for r in runs if r["key"] == "robust_kd")
    teacher_run = next(r for r in runs if r["key"] == "teacher_plus")
    assert rkd_run["results"]["run"]["teacher"]["run_dir"] == teacher_run["run_dir"]
    client = MlflowClient(tracking_uri)
    parents = {client.get_run(r["mlflow_run_id"]).data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "quickstart" and parent.info.status == "FINISHED"
    exp = client.get_experiment_by_name("rkd-quickstart")
    every = client.search_runs([exp.experiment_id])
    names = [r.info.run_name for r in every]
    assert names.count("digits-teacher-plus-at-l2") == 1  # trained once, not again for the student
    # what a researcher sees in MLflow: the table as the parent's description, the experiment
    # described, every run with a role, a readable label and where it came from
    assert "| standard training |" in parent.data.tags["mlflow.note.content"]
    assert "rkd quickstart" in exp.tags["mlflow.note.content"]
    assert f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}" in proc.stdout
    roles = {r.info.run_name: r.data.tags.get("rkd.role") for r in every}
    assert roles["quickstart"] == "quickstart" and roles["digits-adversarial"] == "method"
    assert roles["digits-teacher-plus-at-l2"] == "teacher" and roles["digits-dd-teacher-t20"] == "teacher"
    labels = {r.info.run_name: r.data.tags.get("rkd.label") for r in every}
    assert labels["digits-robust-kd"] == "Robust-KD (digits+ -> digits-)"
    assert labels["digits-teacher-plus-at-l2"] == "robust teacher: AT L2 0.5 on digits+"
    for r in every:
        assert r.data.tags["mlflow.source.name"] == "rkd quickstart" and r.data.tags["mlflow.user"], r.info.run_name
    # metrics grouped by "/", in %; the robustness curves as stepped series; figures; datasets
    student = next(r for r in every if r.info.run_name == "digits-robust-kd")
    results = rkd_run["results"]
    assert student.data.metrics["robust/accuracy"] == pytest.approx(100 * results["headline"]["accuracy"])
    assert student.data.metrics["clean/accuracy"] == pytest.approx(100 * results["clean_accuracy"])
    assert {"train/loss", "train/lr", "time/train_s", "time/eval_s"} <= set(student.data.metrics)
    curve = client.get_metric_history(student.info.run_id, "robust/vs-eps x255/PGD-7 Linf")
    assert sorted(m.step for m in curve) == [0, 4, 8]
    assert student.data.tags["rkd.teacher_run_id"] == teacher_run["mlflow_run_id"]
    assert [a.path for a in client.list_artifacts(student.info.run_id, "figures")] == ["figures/robustness.png"]
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == ["figures/tradeoff.png"]
    assert {i.tags[0].value for i in student.inputs.dataset_inputs} == {"training", "test"}
    # `rkd report --format csv` of this quickstart (its parent by name) gives summary.json's numbers
    report = rkd("report", "--experiment", "rkd-quickstart", "--tracking-uri", tracking_uri, "--parent", "quickstart",
                 "--format", "csv", cwd=tmp_path)
    table = {row["method"]: row for row in csv.DictReader(io.StringIO(report.stdout))}
    nested = [r for r in runs if r["label"] in table]  # rows by the runs' readable labels
    assert {r["key"] for r in nested} >= {"adversarial", "robust_kd", "defensive_distillation"}
    assert "robust teacher: AT L2 0.5 on digits+ [teacher]" in table  # other roles marked, after the methods
    assert list(table).index("Robust-KD (digits+ -> digits-)") < list(table).index(
        "robust teacher: AT L2 0.5 on digits+ [teacher]")
    half_a_cent = 0.00501  # the cells have 2 decimals
    for r in nested:
        row = table[r["label"]]
        assert float(row["clean"]) == pytest.approx(100 * r["results"]["clean_accuracy"], abs=half_a_cent)
        worst = r["results"]["worst_case"][0]
        assert float(row[next(k for k in row if k.startswith("worst case"))]) == pytest.approx(
            100 * worst["accuracy"], abs=half_a_cent)
    assert "Downloading artifacts" not in report.stderr


def test_model_knob_the_arch_does_not_take_is_rejected(tmp_path, tiny_overrides):
    proc = rkd("train", "preset:digits_standard", *tiny_overrides, "model.depth=28", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "model" in proc.stderr and "depth" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cache_build_reuses_lists_and_detects_corruption(tmp_path, tiny_overrides):
    """`rkd cache build` computes a run's adversarial set once (the second call reuses the same
    key), `ls` lists it, `verify` passes, and after one flipped byte `verify` fails (exit 1)."""
    from rkd.config import load_config
    from rkd.experiment import run_experiment

    run_dir = tmp_path / "source"
    run_experiment(load_config("preset:digits_standard", tiny_overrides + ["eval.enabled=false", "train.epochs=1"]),
                   run_dir=run_dir)
    root = tmp_path / "cache"
    build = ["cache", "build", str(run_dir), "--steps", "3", "--limit", "16", "--root", str(root)]
    first, second = rkd(*build, cwd=tmp_path), rkd(*build, cwd=tmp_path)
    key = first.stdout.split()[1].rstrip(":")
    entries = [p.name for p in root.iterdir() if not p.name.startswith(".")]  # .locks: the builders' locks
    assert second.stdout.split()[1].rstrip(":") == key and entries == [key]
    listing = rkd("cache", "ls", "--root", str(root), cwd=tmp_path).stdout
    assert key[:16] in listing and "ok" in listing and "eps=8/255" in listing and "n=16" in listing
    assert rkd("cache", "verify", "--root", str(root), cwd=tmp_path).returncode == 0
    adv = root / key / "adv.npy"
    data = bytearray(adv.read_bytes())
    data[-1] ^= 0xFF
    adv.write_bytes(bytes(data))
    bad = rkd("cache", "verify", "--root", str(root), cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "CORRUPT" in bad.stdout


def test_macd_chain_end_to_end(tmp_path, tracking_uri):
    """MAE stage 1 -> stage 2 -> standard source -> MACD, each trained once through the caches by
    one `rkd train`; results carry both protocols; a second MACD run reuses the MAE teacher, the
    source and the one-time adversarial set (nothing is trained or attacked again)."""
    common = ("data: {dataset: synthetic, limit_train: 48, limit_test: 24, batch_size: 16, flip: false}\n"
              f"tracking: {{tracking_uri: '{tracking_uri}', log_model: false}}\n"
              f"output_dir: {tmp_path / 'runs'}\n")
    mae = ("model: {arch: mae_vit_tiny, embed_dim: 16, depth: 1, num_heads: 2, "
           "decoder_embed_dim: 8, decoder_num_heads: 2}\n"
           "train: {epochs: 1, optimizer: adamw, lr: 1e-3, warmup_epochs: 0, progress: none}\neval: {enabled: false}\n")
    (tmp_path / "mae.yaml").write_text(f"name: mae1\n{common}{mae}method: {{name: mae, stage: reconstruction}}\n")
    (tmp_path / "mae2.yaml").write_text(
        f"name: mae2\n{common}{mae}method: {{name: mae, stage: feature, start_from: {{config: mae.yaml, "
        f"cache_dir: {tmp_path / 'teachers'}}}}}\n".replace("embed_dim: 16,", "embed_dim: 16, fusion: concat_linear,"))
    net = ("model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
           "train: {epochs: 1, warmup_epochs: 0, progress: none}\n")
    (tmp_path / "std.yaml").write_text(f"name: std\n{common}{net}method: {{name: standard}}\n"
                                       "eval: {attacks: [{kind: fgsm, eps: 8/255}]}\n")
    (tmp_path / "macd.yaml").write_text(
        f"name: macd\n{common}{net}"
        f"method: {{name: macd, teacher: {{config: mae2.yaml, cache_dir: {tmp_path / 'teachers'}}}, "
        f"source: {{config: std.yaml, cache_dir: {tmp_path / 'teachers'}}}, attack: {{steps: 3}}, "
        f"cache_dir: {tmp_path / 'adv'}, student_patch: 4}}\n"
        f"eval: {{attacks: [{{kind: fgsm, eps: 8/255}}], transfer: {{attacks: [{{kind: fgsm, eps: 8/255}}, "
        f"{{kind: pgd, eps: 8/255, steps: 3}}], cache_dir: {tmp_path / 'adv'}}}}}\n")
    rkd("train", "macd.yaml", cwd=tmp_path)
    teachers = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "teachers").iterdir() if p.is_dir())
    assert teachers == ["mae1", "mae2", "std"]
    adv_entries = sorted(p.name for p in (tmp_path / "adv").iterdir() if not p.name.startswith("."))
    assert len(adv_entries) == 3  # the one-time training set + two transfer attacks
    (run,) = (tmp_path / "runs").glob("macd-*")
    res = json.loads((run / "results.json").read_text())
    protocols = [(a["name"], a["protocol"], a["source_model"]) for a in res["attacks"]]
    assert protocols == [("FGSM 8/255", "white-box", None), ("FGSM 8/255", "transfer", "std"),
                         ("PGD-3 Linf 8/255", "transfer", "std")]
    assert res["run"]["source"]["name"] == "std" and res["run"]["teacher"]["name"] == "mae2"
    assert "(transfer)" in (run / "results.md").read_text()
    hist = json.loads((run / "history.json").read_text())
    assert {"train_ce", "train_robust", "train_kl", "train_nl2"} <= set(hist[0])
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "adv").rglob("*.npy")}
    rkd("train", "macd.yaml", cwd=tmp_path)
    assert {p: p.stat().st_mtime for p in (tmp_path / "adv").rglob("*.npy")} == mtimes  # reused, not rebuilt
    assert len([p for p in (tmp_path / "teachers").iterdir() if p.is_dir()]) == 3
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("rkd")
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]))
    assert names == ["macd", "macd", "mae1", "mae2", "std"]


def test_tune_with_a_bad_space_fails_before_ray_starts(tmp_path):
    (tmp_path / "space.yaml").write_text("base: preset:digits_robust_kd\nparams:\n  method.beta: {gaussian: [0, 1]}\n"
                                         "  method.gamma: {uniform: [10, 1]}\n  method.n_proj: {choice: []}\n")
    proc = rkd("tune", "space.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    for key, msg in (("params.method.beta", "unknown distribution 'gaussian'"),
                     ("params.method.gamma", "low < high"), ("params.method.n_proj", "at least one value")):
        assert f"space.yaml: {key}: " in proc.stderr and msg in proc.stderr
    assert "Ray instance" not in proc.stdout + proc.stderr  # no cluster was started


def test_report_prints_the_table_of_an_experiment(tmp_path, tiny_overrides, tracking_uri):
    (tmp_path / "one.yaml").write_text("name: one\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n")
    rkd("train", "one.yaml", *tiny_overrides, cwd=tmp_path)
    proc = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert "| one |" in proc.stdout and "FGSM 8/255" in proc.stdout
    out = tmp_path / "table.tex"
    rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, "--format", "latex", "-o", str(out),
        cwd=tmp_path)
    assert out.read_text().startswith(r"\begin{tabular}") and "one &" in out.read_text()
    rows = json.loads(rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, "--format", "json",
                          cwd=tmp_path).stdout)
    assert [r["method"] for r in rows] == ["one"] and "FGSM 8/255" in rows[0]
    no_parent = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, "--parent", "nope",
                    cwd=tmp_path, check=False)
    assert no_parent.returncode == 1 and "--parent nope: no run of that id or name" in no_parent.stderr
    rkd("train", "one.yaml", *tiny_overrides, "seed=1", cwd=tmp_path)
    seeds = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, cwd=tmp_path)  # two seeds: one row
    assert "| one | 0, 1 |" in seeds.stdout and "mean ± sample std over seeds" in seeds.stdout
    per_run = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, "--per-run", cwd=tmp_path)
    assert per_run.stdout.count("| one |") == 2
    bad = rkd("report", "--experiment", "nope", "--tracking-uri", tracking_uri, cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "no MLflow experiment named 'nope'" in bad.stderr


def test_eval_on_the_validation_split_and_its_report(tmp_path, tiny_overrides, tracking_uri):
    """`rkd eval RUN --split validation` evaluates on the images the training held out
    (validation/results.json, its own nested MLflow run); the test results stay as they were;
    `rkd report --split validation` tabulates those evaluations and the default report does
    not mix them into the test table. A run without a validation split gets one clear line."""
    (tmp_path / "one.yaml").write_text("name: one\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n")
    run_dir = tmp_path / "run"
    rkd("train", "one.yaml", *tiny_overrides, "data.val_size=12", "--run-dir", str(run_dir), cwd=tmp_path)
    test_results = (run_dir / "results.json").read_text()
    proc = rkd("eval", str(run_dir), "--split", "validation", cwd=tmp_path)
    assert "FGSM 8/255" in proc.stdout
    val = json.loads((run_dir / "validation" / "results.json").read_text())
    assert val["evaluated_split"] == "validation" and val["num_samples"] == 12
    assert val["splits"]["validation"] == 12 and val["splits"]["test"] == 32
    assert (run_dir / "results.json").read_text() == test_results
    run = json.loads((run_dir / "run.json").read_text())
    child = MlflowClient(tracking_uri).get_run(run["last_validation_evaluation"]["mlflow_run_id"])
    assert child.data.tags["rkd.evaluated_split"] == "validation" and child.info.run_name == "one (validation)"
    table = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, cwd=tmp_path).stdout
    assert table.count("| one |") == 1 and "32 test images" in table
    val_table = rkd("report", "--experiment", "rkd", "--tracking-uri", tracking_uri, "--split", "validation",
                    "--over-seeds", cwd=tmp_path).stdout
    assert "12 validation images" in val_table and "| one | 0 |" in val_table

    plain = tmp_path / "plain"
    rkd("train", "one.yaml", *tiny_overrides, "--run-dir", str(plain), cwd=tmp_path)
    bad = rkd("eval", str(plain), "--split", "validation", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "data.val_size" in bad.stderr and "Traceback" not in bad.stderr
