"""The `jobs/*.py` entry points as a user runs them: `ray start --head` on 127.0.0.1, `ray job
submit` of a tune job, a real `mlflow server` (sqlite) read back with MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 90) -> None:
    """Until the server answers at all (Ray's dashboard answers 401 without its token: it is up)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_ray_job_submit_tune_job_with_mlflow_server(tmp_path):
    """`ray start --head` on 127.0.0.1, `ray job submit` of a small tune job, status SUCCEEDED,
    its nested runs read back from a real `mlflow server` (sqlite) with MlflowClient; both
    servers stopped afterwards."""
    bindir = Path(sys.executable).parent
    repo = Path(__file__).resolve().parents[1]
    mport, dport, gport = _free_port(), _free_port(), _free_port()
    # Ray's token authentication stays on: every process here (head, CLI clients, the job's
    # driver, which inherits the head's environment) uses the token in ~/.ray/auth_token
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    subprocess.run([str(bindir / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True)
    uri = f"http://127.0.0.1:{mport}"
    mlflow_srv = subprocess.Popen(
        [str(bindir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(mport)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    head = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gport),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dport), "--include-dashboard", "true",
         "--num-cpus", "2"], stdout=open(tmp_path / "ray_head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True, env=env)
    try:
        _wait_http(f"{uri}/health")
        _wait_http(f"http://127.0.0.1:{dport}/api/version", timeout=180)
        (tmp_path / "base.yaml").write_text(
            "data: {dataset: synthetic, limit_train: 48, limit_test: 24, batch_size: 16}\n"
            "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
            "train: {epochs: 1, warmup_epochs: 0, progress: none}\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n"
            f"output_dir: {tmp_path / 'runs'}\ntracking: {{experiment: job-e2e, log_model: false}}\n")
        (tmp_path / "space.yaml").write_text("base: base.yaml\nmetric: FGSM 8/255\nscheduler: {name: fifo}\n"
                                             "searcher: grid\nparams: {train.lr: {grid: [0.01, 0.05]}}\n")
        env_json = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"},
                               "excludes": [".venv", "runs", "mlruns", "mlflow.db", ".git", "data"]})
        sub = subprocess.run(
            [str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dport}", "--submission-id",
             "rkd-e2e", "--working-dir", str(repo), "--runtime-env-json", env_json, "--",
             sys.executable, "jobs/tune.py", str(tmp_path / "space.yaml"), "--name", "job-sweep"],
            capture_output=True, text=True, timeout=600, env=env)
        # the CLI (as a user runs it) finds the token `ray start` created in ~/.ray
        status = subprocess.run([str(bindir / "ray"), "job", "status", "rkd-e2e", "--address",
                                 f"http://127.0.0.1:{dport}"], capture_output=True, text=True, env=env)
        assert "Job 'rkd-e2e' succeeded" in status.stdout + status.stderr, sub.stdout[-3000:] + sub.stderr[-3000:]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("job-e2e")
        (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`rkd.kind` = 'sweep'")
        assert parent.info.status == "FINISHED"
        trials = client.search_runs([exp.experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
        assert all("robust/white-box/FGSM 8-255" in t.data.metrics for t in trials)
        assert {json.loads(t.data.tags["rkd.sample"])["train.lr"] for t in trials} == {0.01, 0.05}
    finally:
        for proc in (head, mlflow_srv):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (head, mlflow_srv):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # `ray start` recorded this cluster as the machine's current one and a stopped `--block`
        # head leaves that record behind: later local clusters' state-API clients ("auto") would
        # look for this dead one
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{gport}"):
            current.unlink()
    assert head.poll() is not None and mlflow_srv.poll() is not None
