"""MLflow tracking: what a run records, FAILED runs, URI resolution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from rkd.config import load_config
from rkd.engine import Callback
from rkd.experiment import run_experiment
from rkd.experiment.builders import build_data
from rkd.experiment.reevaluate import load_trained_model
from rkd.tracking import DEFAULT_TRACKING_URI, MlflowRun, resolve_tracking_uri


class Boom(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        raise RuntimeError("worker exploded")


def test_uri_resolution(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_run_records_params_metrics_artifacts(tmp_path, tiny_overrides, tracking_uri):
    cfg = load_config("preset:digits_standard", tiny_overrides + ["tracking.log_model=true",
                                                                   "eval.attacks=[{kind: fgsm, eps: 8/255}]"])
    out = run_experiment(cfg, run_dir=tmp_path / "r", tags={"team": "x"})
    client = MlflowClient(tracking_uri)
    run = client.get_run(out.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["method.name"] == "standard"
    assert run.data.tags["rkd.method"] == "standard" and run.data.tags["team"] == "x"
    hist = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in hist] == [1, 2]
    assert run.data.metrics["clean/accuracy"] == pytest.approx(100 * out.results["clean_accuracy"])
    assert run.data.metrics["robust/white-box/FGSM 8-255"] == pytest.approx(100 * out.results["attacks"][0]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results.json", "results.md"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/robustness.png"]
    # params mean something: no None, the attack grid as one param of labels
    assert "None" not in run.data.params.values() and run.data.params["eval.attacks"] == "FGSM 8/255"
    assert not any(k.startswith("eval.attacks.") for k in run.data.params)
    # the eps ladder as a stepped series: clean at step 0, FGSM at 8 (eps in 1/255), in %
    ladder = client.get_metric_history(run.info.run_id, "robust/vs-eps x255/FGSM Linf")
    assert sorted(m.step for m in ladder) == [0, 8]
    assert [m.value for m in sorted(ladder, key=lambda m: m.step)] == pytest.approx(
        [100 * out.results["clean_accuracy"], 100 * out.results["attacks"][0]["accuracy"]])
    # the data it trained and was tested on
    logged = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(logged) == {"training", "test"} and logged["test"].name.startswith(cfg.data.dataset)
    assert logged["test"].digest == build_data(cfg.data).test.fingerprint()[:16]
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.source_run_id == run.info.run_id for m in models)
    assert run.data.tags["rkd.model_format"] == "pt2"


def test_logged_model_loads_without_rkd_in_a_fresh_process(tmp_path, tiny_overrides, tracking_uri):
    """The logged pt2 model loads with mlflow.pytorch.load_model in another process that never
    imports rkd, predicts on its input example and on a batch of another size, as rkd's model."""
    cfg = load_config("preset:digits_standard", tiny_overrides + ["tracking.log_model=true", "eval.enabled=false"])
    out = run_experiment(cfg, run_dir=tmp_path / "r")
    client = MlflowClient(tracking_uri)
    (model,) = [m for m in client.search_logged_models(experiment_ids=[client.get_run(
        out.mlflow_run_id).info.experiment_id]) if m.source_run_id == out.mlflow_run_id]
    script = f"""
import json, sys
import mlflow, mlflow.pytorch, numpy as np, torch
mlflow.set_tracking_uri({tracking_uri!r})
uri = "models:/{model.model_id}"
net = mlflow.pytorch.load_model(uri)
local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
example = torch.as_tensor(np.asarray(mlflow.models.Model.load(local).load_input_example(local)))
with torch.no_grad():
    print(json.dumps({{"rkd": "rkd" in sys.modules, "example": net(example).tolist(),
                      "five": list(net(torch.zeros(5, *example.shape[1:])).shape)}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    _, net, test_set = load_trained_model(tmp_path / "r")
    with torch.no_grad():
        expected = net(torch.stack([test_set[0][0], test_set[1][0]]))
    assert not got["rkd"] and got["five"] == [5, 10]
    assert torch.tensor(got["example"]) == pytest.approx(expected, abs=1e-4)


def test_failed_run_ends_failed(tmp_path, tiny_overrides, tracking_uri):
    cfg = load_config("preset:digits_standard", tiny_overrides)
    with pytest.raises(RuntimeError, match="exploded"):
        run_experiment(cfg, run_dir=tmp_path / "r", callbacks=[Boom()])
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "worker exploded" in run.data.tags["rkd.error"]


def test_only_rank_zero_logs(tmp_path, tracking_uri):
    cfg = load_config(None, [f"tracking.tracking_uri={tracking_uri}"])
    with MlflowRun(cfg.tracking, run_name="r1", rank=1) as r:
        r.log_metrics({"a": 1.0})
        assert r.run_id is None
    client = MlflowClient(tracking_uri)
    assert client.get_experiment_by_name(cfg.tracking.experiment) is None


def test_nested_runs_carry_parent_tag(tracking_uri):
    cfg = load_config(None, [f"tracking.tracking_uri={tracking_uri}"])
    with MlflowRun(cfg.tracking, run_name="parent") as parent:
        with MlflowRun(cfg.tracking, run_name="child", parent_run_id=parent.run_id) as child:
            pass
    run = MlflowClient(tracking_uri).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id


def test_end_run_keeps_the_status_of_a_run_already_ended(tracking_uri):
    from rkd.tracking import create_run, end_run, end_tagged_runs

    cfg = load_config(None, [f"tracking.tracking_uri={tracking_uri}"])
    stopped = create_run(cfg.tracking, "trial", tags={"rkd.trial_id": "t1"})
    running = create_run(cfg.tracking, "other")
    # the sweep driver records a trial the scheduler stopped; its process then fails as it dies
    assert end_tagged_runs(cfg.tracking, "rkd.trial_id", "t1", "KILLED", {"rkd.stopped_at_epoch": 1}) == 1
    end_run(cfg.tracking, stopped, "FAILED", "RayActorError: the controller died")
    end_run(cfg.tracking, running, "FAILED", "ValueError: diverged")
    client = MlflowClient(tracking_uri)
    kept, failed = client.get_run(stopped), client.get_run(running)
    assert kept.info.status == "KILLED" and "rkd.error" not in kept.data.tags
    assert failed.info.status == "FAILED" and failed.data.tags["rkd.error"] == "ValueError: diverged"
    # the trial's own process (rank 0's run context) fails as its controller dies: still KILLED
    worker_side = create_run(cfg.tracking, "trial2", tags={"rkd.trial_id": "t2"})
    with pytest.raises(RuntimeError):
        with MlflowRun(cfg.tracking, run_name="trial2", run_id=worker_side):
            end_tagged_runs(cfg.tracking, "rkd.trial_id", "t2", "KILLED")
            raise RuntimeError("ActorDiedError: the controller died")
    assert client.get_run(worker_side).info.status == "KILLED"


def test_runs_carry_their_source_and_a_description_cut_to_mlflows_tag_length(tracking_uri, monkeypatch):
    from rkd.orchestration.tune import sweep_note
    from rkd.tracking.mlflow_tracker import note_text

    monkeypatch.setenv("RKD_SOURCE", "rkd train")
    cfg = load_config(None, [f"tracking.tracking_uri={tracking_uri}"])
    with MlflowRun(cfg.tracking, run_name="described") as r:
        r.describe("x" * 20000)
        r.describe_experiment("what this experiment holds")
        link = r.ui_link()
    client = MlflowClient(tracking_uri)
    run = client.get_run(r.run_id)
    assert run.data.tags["mlflow.source.name"] == "rkd train" and run.data.tags["mlflow.user"]
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40  # the suite runs in a git checkout
    note = run.data.tags["mlflow.note.content"]
    assert len(note) <= 7900 and note.endswith("all of it: summary.md)")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert exp.tags["mlflow.note.content"] == "what this experiment holds"
    assert link.endswith(f"#/experiments/{exp.experiment_id}/runs/{r.run_id}?workflowType=machine_learning")
    assert note_text("short", "x.md") == "short"
    trials = [{"trial_id": "a", "config": {"lr": 0.1}, "metrics": {"objective": 0.5, "finished": 1}, "error": None},
              {"trial_id": "b", "config": {"lr": 1.0}, "metrics": {}, "error": "boom"},
              {"trial_id": "c", "config": {"lr": 0.01}, "metrics": {"objective": 0.7, "finished": 1}, "error": None}]
    note = sweep_note({"sweep": "s", "metric": "clean", "mode": "max", "trials": trials})
    rows = [line.split(" | ")[0] for line in note.splitlines() if line.startswith("| ") and "trial" not in line]
    assert rows == ["| c", "| a", "| b"] and "| failed |" in note  # best first, the failed one last


def test_log_results_logs_jsma_and_input_gradient_metrics(tracking_uri):
    cfg = load_config(None, [f"tracking.tracking_uri={tracking_uri}"])
    results = {"clean_accuracy": 0.9, "eval_wall_time_s": 1.0, "train_wall_time_s": None,
               "attacks": [{"name": "FGSM 8/255", "protocol": "white-box", "accuracy": 0.5}],
               "jsma": [{"saliency": "probabilities", "success_rate": 0.1},
                        {"saliency": "logits", "success_rate": 0.95}],
               "input_gradient": {"l2_mean": 2e-6, "l1_mean": 1e-4, "linf_mean": 1e-7, "zero_fraction": 0.75,
                                  "num_samples": 8}}
    with MlflowRun(cfg.tracking, run_name="distilled") as r:
        r.log_results(results, files=[])
        r.log_results({k: v for k, v in results.items() if k not in ("jsma", "input_gradient")}, files=[])
    metrics = MlflowClient(tracking_uri).get_run(r.run_id).data.metrics
    assert metrics["jsma/probabilities/success rate"] == pytest.approx(10)
    assert metrics["jsma/logits/success rate"] == pytest.approx(95)
    assert metrics["input-gradient/l2 mean"] == pytest.approx(2e-6)
    assert metrics["input-gradient/zero share"] == pytest.approx(75)
    assert metrics["robust/white-box/FGSM 8-255"] == pytest.approx(50) and "time/train_s" not in metrics


def test_a_tracking_store_that_fails_mid_run_does_not_end_the_run(tmp_path, tiny_overrides, monkeypatch):
    """The store breaks after the run started (its params went through, the first epoch's
    metrics do not): training and evaluation finish, the run warns once, run.json records the
    gap, and the backlog file keeps every record MLflow missed, in order."""
    import json

    real = MlflowClient.log_batch

    def dies_at_the_first_metrics(self, run_id, *args, **kwargs):
        if kwargs.get("metrics"):
            raise ConnectionError("tracking server went away")
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", dies_at_the_first_metrics)
    cfg = load_config("preset:digits_standard", [*tiny_overrides, "train.epochs=3", "eval.checks.enabled=false",
                                                  "eval.worst_case.enabled=false"])
    with pytest.warns(RuntimeWarning, match="the run goes on without it"):
        out = run_experiment(cfg, run_dir=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "FINISHED" and 0 <= out.results["clean_accuracy"] <= 1
    gap = record["tracking_gap"]
    assert "tracking server went away" in gap["error"] and gap["backlog"].endswith("tracking_backlog.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "run" / "tracking_backlog.jsonl").read_text().splitlines()]
    points = [p for x in lines if x["request"] == "metrics" for p in x["points"]]
    assert [step for name, _, step in points if name == "train/loss"] == [1, 2, 3]
    assert lines[-1]["request"] == "end" and lines[-1]["status"] == "FINISHED"

    # the store is back: `rkd sync` sends what it missed into the same run, and keeps the backlog
    monkeypatch.undo()
    from rkd.cli import main

    assert main(["sync", str(tmp_path / "run")]) == 0
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "clean/accuracy" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"results.json", "results.md"}
    assert not (tmp_path / "run" / "tracking_backlog.jsonl").exists()
    assert "synced" in json.loads((tmp_path / "run" / "run.json").read_text())["tracking_gap"]
    assert main(["sync", str(tmp_path / "run")]) == 1  # nothing left to send: one line, exit 1


def test_system_metrics_are_an_option(tracking_uri):
    """tracking.system_metrics: MLflow's monitor samples this process into system/* metrics."""
    import time

    on = load_config(None, [f"tracking.tracking_uri={tracking_uri}", "tracking.system_metrics=true",
                            "tracking.system_metrics_interval_s=0.5"])
    with MlflowRun(on.tracking, run_name="watched") as watched:
        time.sleep(1.5)
    with MlflowRun(load_config(None, [f"tracking.tracking_uri={tracking_uri}"]).tracking, run_name="plain") as plain:
        time.sleep(1.0)
    client = MlflowClient(tracking_uri)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        client.get_run(watched.run_id).data.metrics)
    assert not client.get_run(plain.run_id).data.metrics



def test_the_input_example_needs_two_images():
    """Fewer than two test images: no input example (the model is then logged pickled), since a
    batch of one would export with a fixed batch size."""
    from rkd.experiment.pipeline import example_batch

    images = [(torch.full((1, 4, 4), float(i)), i) for i in range(3)]
    assert example_batch(images).shape == (2, 1, 4, 4) and example_batch(images)[1].max() == 1.0
    assert example_batch(images[:1]) is None and example_batch([]) is None
