"""Honest, durable run states through the real `rkd` command: a run directory has one writer,
SIGTERM stops a run as Ctrl-C does (KILLED, resumable), a finished run stays FINISHED through
`--resume` and `rkd eval`, and a re-evaluation is an MLflow run of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.e2e


def rkd_popen(*args, cwd) -> subprocess.Popen:
    """`rkd` in the background, its output in files (a full pipe would block it); read with
    :func:`finish`."""
    n = len(list(Path(cwd).glob("rkd-*.out")))
    out, err = (open(Path(cwd) / f"rkd-{n}.{ext}", "w+") for ext in ("out", "err"))
    proc = subprocess.Popen([sys.executable, "-m", "rkd.cli", *args], cwd=cwd, stdout=out, stderr=err, text=True)
    proc.files = (out, err)
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for ``proc``; its stderr."""
    proc.wait(timeout=timeout)
    out, err = proc.files
    err.seek(0)
    text = err.read()
    out.close()
    err.close()
    return text


def rkd(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rkd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300):
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"ended before {what} ({proc.returncode}):\n{finish(proc, 10)}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def test_one_writer_sigterm_kills_resume_finishes_and_a_finished_run_stays_finished(tmp_path, tiny_overrides,
                                                                                   tracking_uri):
    run_dir = tmp_path / "run"
    train = ["train", "preset:digits_adversarial", *tiny_overrides, "train.epochs=60", "--run-dir", str(run_dir)]
    first = rkd_popen(*train, cwd=tmp_path)
    wait_for(lambda: any((run_dir / "checkpoints").glob("epoch_*.pt")), first, "first checkpoint")

    second = rkd(*train, cwd=tmp_path)  # the same directory while the first writes it
    assert second.returncode == 1 and f"in use by another rkd process (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr

    first.send_signal(signal.SIGTERM)
    err = finish(first, 120)
    assert first.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    assert status(run_dir) == "KILLED" and client.get_run(run_id).info.status == "KILLED"
    assert not (run_dir / "results.json").exists() and any((run_dir / "checkpoints").glob("epoch_*.pt"))

    resumed = rkd("train", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert status(run_dir) == "FINISHED" and client.get_run(run_id).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert len(steps) == 60  # every epoch, across the stop

    again = rkd("train", "--resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 1 and "has finished: nothing to resume" in again.stderr
    assert status(run_dir) == "FINISHED" and client.get_run(run_id).info.status == "FINISHED"


def test_re_evaluation_is_its_own_run_keeps_history_and_a_stopped_one_touches_nothing(tmp_path, tiny_overrides,
                                                                                     tracking_uri):
    run_dir = tmp_path / "run"
    done = rkd("train", "preset:digits_standard", *tiny_overrides, "--run-dir", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trained = json.loads((run_dir / "results.json").read_text())
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    before = client.get_run(run_id).data

    ev = rkd("eval", str(run_dir), "eval.attacks=[{kind: fgsm, eps: 3/255}]", "eval.worst_case.enabled=false",
             "eval.checks.enabled=false", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    after = client.get_run(run_id).data  # the training run is as it was
    assert (after.metrics, after.tags) == (before.metrics, before.tags)
    child_id = json.loads((run_dir / "run.json").read_text())["last_evaluation"]["mlflow_run_id"]
    child = client.get_run(child_id)
    assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == run_id
    assert child.data.tags["rkd.evaluates"] == run_id and "robust/white-box/FGSM 3-255" in child.data.metrics
    kept = list((run_dir / "history").glob("results-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == trained
    now = json.loads((run_dir / "results.json").read_text())
    assert [a["name"] for a in now["attacks"]] == ["FGSM 3/255"] and now["splits"] == trained["splits"]

    slow = rkd_popen("eval", str(run_dir), "eval.attacks=[{kind: pgd, eps: 8/255, steps: 100000}]",
                     "eval.worst_case.enabled=false", "eval.checks.enabled=false", cwd=tmp_path)
    evals = lambda: client.search_runs([child.info.experiment_id], f"tags.`rkd.evaluates` = '{run_id}'")  # noqa: E731
    wait_for(lambda: len(evals()) == 2, slow, "the second evaluation's run")
    time.sleep(1.0)
    slow.send_signal(signal.SIGINT)
    err = finish(slow, 120)
    assert slow.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert client.get_run(run_id).info.status == "FINISHED" and status(run_dir) == "FINISHED"
    assert sorted(r.info.status for r in evals()) == ["FINISHED", "KILLED"]
    assert json.loads((run_dir / "results.json").read_text()) == now  # nothing replaced


@pytest.mark.ray
def test_ctrl_c_of_the_quickstart_during_a_trial_leaves_no_run_running(tmp_path, tiny_overrides, tracking_uri):
    over = [o for o in tiny_overrides if not o.startswith("output_dir")]
    job = rkd_popen("quickstart", *over, "adversarial:method.attack.steps=2",
                    "adversarial:eval.attacks=[{kind: pgd, eps: 8/255, steps: 100000}]",
                    "--only", "adversarial", "--output-dir", "q", cwd=tmp_path)  # one trial; its source trains first
    client = MlflowClient(tracking_uri)

    def trial_running():
        exp = client.get_experiment_by_name("rkd-quickstart")
        return exp is not None and any(r.info.run_name == "digits-adversarial" and r.info.status == "RUNNING"
                                       for r in client.search_runs([exp.experiment_id]))

    wait_for(trial_running, job, "the adversarial trial's run")
    time.sleep(3.0)
    job.send_signal(signal.SIGINT)
    err = finish(job, 300)
    assert job.returncode == 130 and "interrupted" in err
    every = client.search_runs([client.get_experiment_by_name("rkd-quickstart").experiment_id])
    assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
    assert {r.info.run_name: r.info.status for r in every}["quickstart"] == "KILLED"
