"""Ray orchestration on a real two-node local cluster (loopback): Train workers vs --local,
fault injection and resume, Tune sweeps with nested MLflow runs, interruption and resume, the
shared adversarial set in the object store."""

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

from rkd.config import load_config
from rkd.engine import Callback

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def _cfg(tiny_overrides, *extra):
    over = [o for o in tiny_overrides if not o.startswith(("data.limit_train", "train.epochs"))]
    return load_config(None, over + ["data.limit_train=96", "train.epochs=3", "eval.attacks=[{kind: fgsm, eps: 8/255}]",
                                     "train.optimizer=adam", "train.lr=0.003", *extra])


def test_two_worker_trainer_matches_local_run(ray_cluster, tmp_path, tiny_overrides, tracking_uri):
    from rkd.orchestration.train import fit

    local = fit(_cfg(tiny_overrides, "name=local"), run_dir=tmp_path / "local")
    remote = fit(_cfg(tiny_overrides, "name=dist", "scaling.num_workers=2"), run_dir=tmp_path / "dist")
    hist_l = local.history
    hist_d = json.loads((tmp_path / "dist" / "history.json").read_text())
    assert [h["epoch"] for h in hist_d] == [1, 2, 3]
    # the same global batch, gradients averaged over the two workers: the loss curves agree
    # (not exactly: batch-norm statistics are per worker and the augmentation draws differ)
    for a, b in zip(hist_l, hist_d):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.25)
    res_d = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert abs(res_d["clean_accuracy"] - local.results["clean_accuracy"]) <= 0.2
    assert remote["finished"] == 1 and remote["clean/accuracy"] == pytest.approx(100 * res_d["clean_accuracy"])
    run = MlflowClient(tracking_uri).get_run(remote["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rkd.ray_workers"] == "2"
    assert run.data.metrics["robust/white-box/FGSM 8-255"] == pytest.approx(100 * res_d["attacks"][0]["accuracy"])


class CrashOnce(Callback):
    """Fault injection: the worker of ``rank`` exits the process during epoch ``epoch + 1``
    (1-based ``epoch`` is the last one it completes), on the first attempt only (no Ray
    checkpoint existed at its start). It first waits ``delay_s``: Ray's controller collects the
    workers' reports (and registers their checkpoints) when it polls them, so a process that
    dies within the same poll interval as its last report takes that report with it."""

    def __init__(self, epoch: int, rank: int, delay_s: float = 3.0):
        self.epoch, self.rank, self.delay_s = epoch, rank, delay_s

    def on_fit_start(self, trainer):
        import ray.train

        self.armed = ray.train.get_checkpoint() is None

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.armed and trainer.rank == self.rank and epoch + 1 == self.epoch:
            import os
            import time

            time.sleep(self.delay_s)
            os._exit(17)


def test_crashed_worker_restarts_from_its_checkpoint(ray_cluster, tmp_path, tiny_overrides, tracking_uri):
    import ray.cloudpickle

    from rkd.orchestration.train import fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    cfg = _cfg(tiny_overrides, "name=crashy", "scaling.num_workers=2", "scaling.max_failures=1")
    out = fit(cfg, run_dir=tmp_path / "crashy", worker_callbacks=[CrashOnce(epoch=2, rank=1)])
    hist = json.loads((tmp_path / "crashy" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]  # the planned epochs, once each in the history
    assert out["finished"] == 1 and out["epoch"] == 3
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rkd").experiment_id],
                              filter_string="attributes.run_name = 'crashy'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, not two
    # no validation split (data.val_size 0): the per-epoch metric is a test figure, named so
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "test/accuracy by epoch")]
    assert max(steps) == 3 and set(steps) == {1, 2, 3}


def _macd_chain(tmp_path, tracking_uri):
    """Tiny MAE -> MAE+feature -> standard -> MACD configs (synthetic data) in tmp_path."""
    common = ("data: {dataset: synthetic, limit_train: 48, limit_test: 24, batch_size: 16, flip: false}\n"
              f"tracking: {{tracking_uri: '{tracking_uri}', log_model: false, experiment: sweeps}}\n"
              f"output_dir: {tmp_path / 'runs'}\n")
    mae = ("model: {arch: mae_vit_tiny, embed_dim: 16, depth: 1, num_heads: 2, decoder_embed_dim: 8, "
           "decoder_num_heads: 2}\ntrain: {epochs: 1, optimizer: adamw, lr: 1e-3, warmup_epochs: 0, progress: none}\n"
           "eval: {enabled: false}\n")
    teachers = tmp_path / "teachers"
    (tmp_path / "mae.yaml").write_text(f"name: mae1\n{common}{mae}method: {{name: mae}}\n")
    (tmp_path / "mae2.yaml").write_text(f"name: mae2\n{common}{mae}method: {{name: mae, stage: feature, "
                                        f"start_from: {{config: {tmp_path / 'mae.yaml'}, cache_dir: {teachers}}}}}\n")
    net = ("model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
           "train: {epochs: 2, warmup_epochs: 0, progress: none}\n")
    (tmp_path / "std.yaml").write_text(f"name: std\n{common}{net}method: {{name: standard}}\n")
    (tmp_path / "macd.yaml").write_text(
        f"name: macd\n{common}{net}method: {{name: macd, teacher: {{config: {tmp_path / 'mae2.yaml'}, "
        f"cache_dir: {teachers}}}, source: {{config: {tmp_path / 'std.yaml'}, cache_dir: {teachers}}}, "
        f"attack: {{steps: 3}}, cache_dir: {tmp_path / 'adv'}, student_patch: 4}}\n"
        "eval: {attacks: [{kind: fgsm, eps: 8/255}]}\n")


def test_sweep_nested_runs_and_one_adversarial_set_for_all_trials(ray_cluster, tmp_path, tracking_uri):
    from rkd.orchestration.tune import run_sweep

    _macd_chain(tmp_path, tracking_uri)
    (tmp_path / "space.yaml").write_text(
        "base: macd.yaml\nmetric: FGSM 8/255\nscheduler: {name: fifo}\nsearcher: grid\n"
        "params: {method.student_mask_ratio: {grid: [0.5, 0.6, 0.7]}}\n")
    summary = run_sweep(tmp_path / "space.yaml", name="s1")
    assert len(summary["trials"]) == 3 and all(t["metrics"]["finished"] == 1 for t in summary["trials"])
    assert summary["best"]["metrics"]["objective"] == max(t["metrics"]["objective"] for t in summary["trials"])
    entries = [p for p in (tmp_path / "adv").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1  # built once, by the driver
    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    assert (parent.info.status == "FINISHED"
            and parent.data.metrics["best_objective"] == summary["best"]["metrics"]["objective"])
    assert 0 <= summary["best"]["metrics"]["objective"] <= 100  # an accuracy in %, as everywhere
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == ["figures/tradeoff.png"]
    exp = client.get_experiment_by_name("sweeps").experiment_id
    trials = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                                     "and tags.`rkd.sweep` = 's1'")
    assert len(trials) == 3
    for r in trials:
        assert r.info.status == "FINISHED", r.data.tags.get("rkd.error")
        assert r.data.tags["rkd.shared_data"] == "object_store"
        assert "robust/white-box/FGSM 8-255" in r.data.metrics
    ratios = sorted(json.loads(r.data.tags["rkd.sample"])["method.student_mask_ratio"] for r in trials)
    assert ratios == [0.5, 0.6, 0.7]


def test_interrupted_sweep_resumes_only_the_remaining_trials(ray_cluster, tmp_path, tiny_overrides, tracking_uri):
    base = tmp_path / "base.yaml"
    over = dict(o.split("=", 1) for o in tiny_overrides)
    base.write_text(
        "data: {dataset: synthetic, limit_train: 64, limit_test: 32, batch_size: 16}\n"
        "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
        "train: {epochs: 2, warmup_epochs: 0, progress: none}\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n"
        f"output_dir: {over['output_dir']}\ntracking: {{tracking_uri: '{tracking_uri}', log_model: false}}\n")
    space = tmp_path / "space.yaml"
    space.write_text("base: base.yaml\nmetric: clean\nscheduler: {name: fifo}\nsearcher: grid\n"
                     "params: {train.lr: {grid: [0.01, 0.02, 0.03, 0.04]}}\n")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "rkd.cli", "tune", str(space), "--name", "s2",
                             "--max-concurrent", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs_dir = Path(over["output_dir"]) / "s2"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(runs_dir.glob("*/results.json"))) < 2:
        time.sleep(0.5)
    time.sleep(2.5)  # the driver records them as finished (its state is saved every second)
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime for p in runs_dir.glob("*/results.json")
                   if p.stat().st_mtime < killed_at - 2}  # finished well before the kill
    assert 2 <= len(done_before) < 4
    time.sleep(3)  # let Ray notice the dead driver and clean up its trials

    from rkd.orchestration.tune import run_sweep

    summary = run_sweep(space, name="s2", resume=True)
    assert len(summary["trials"]) == 4 and all(t["metrics"].get("finished") == 1 for t in summary["trials"])
    after = {p.parent.name: p.stat().st_mtime for p in runs_dir.glob("*/results.json")}
    assert len(after) == 4
    assert all(after[k] == v for k, v in done_before.items())  # finished trials were not rerun
    lrs = sorted(t["config"]["train.lr"] for t in summary["trials"])
    assert lrs == [0.01, 0.02, 0.03, 0.04]


def test_failed_trial_is_recorded_failed(ray_cluster, tmp_path, tracking_uri):
    from rkd.orchestration.tune import run_sweep

    (tmp_path / "base.yaml").write_text(
        "data: {dataset: synthetic, limit_train: 32, limit_test: 16, batch_size: 16}\n"
        "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
        "train: {epochs: 1, warmup_epochs: 0, progress: none}\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n"
        f"output_dir: {tmp_path / 'runs'}\ntracking: {{tracking_uri: '{tracking_uri}', log_model: false}}\n")
    (tmp_path / "space.yaml").write_text("base: base.yaml\nmetric: clean\nscheduler: {name: fifo}\nsearcher: grid\n"
                                         "params: {train.lr: {grid: [0.01, 1.0e+30]}}\n")  # the second diverges
    summary = run_sweep(tmp_path / "space.yaml", name="s3")
    by_lr = {t["config"]["train.lr"]: t for t in summary["trials"]}
    assert by_lr[0.01]["error"] is None and "diverged" in by_lr[1e30]["error"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rkd").experiment_id],
                              filter_string="tags.`rkd.sweep` = 's3'")
    status = {json.loads(r.data.tags["rkd.sample"])["train.lr"]: r.info.status for r in runs}
    assert status == {0.01: "FINISHED", 1e30: "FAILED"}
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"  # the sweep itself completed


def _tiny_base(path, tracking_uri, epochs, extra=""):
    path.write_text(
        "data: {dataset: synthetic, limit_train: 64, limit_test: 32, batch_size: 16}\n"
        "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
        f"train: {{epochs: {epochs}, warmup_epochs: 0, progress: none}}\n"
        "eval: {attacks: [{kind: fgsm, eps: 8/255}]}\n"
        f"output_dir: {path.parent / 'runs'}\ntracking: {{tracking_uri: '{tracking_uri}', log_model: false}}\n{extra}")


class _Trial:  # what the ASHA scheduler reads of a trial
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_asha_stops_worse_trials_but_lets_survivors_report_their_final_evaluation(tmp_path, tracking_uri):
    from ray.tune.schedulers import TrialScheduler

    from rkd.config.tune_space import load_space
    from rkd.orchestration.tune import _scheduler

    _tiny_base(tmp_path / "base.yaml", tracking_uri, epochs=3)
    (tmp_path / "space.yaml").write_text("base: base.yaml\nmetric: clean\nscheduler: {name: asha, grace_period: 1, "
                                         "reduction_factor: 2}\nparams: {train.lr: {uniform: [0.01, 0.1]}}\n")
    sched = _scheduler(load_space(tmp_path / "space.yaml"))
    sched.set_search_properties("objective", "max")
    good, bad = _Trial("good"), _Trial("bad")
    sched.on_trial_add(None, good)
    sched.on_trial_add(None, bad)
    decisions = [sched.on_trial_result(None, good, {"epoch": e, "objective": 0.9, "finished": 0}) for e in (1, 2, 3)]
    # the final report (whole test set) comes after the last epoch's: the trial must still be running
    decisions.append(sched.on_trial_result(None, good, {"epoch": 3, "objective": 0.92, "finished": 1}))
    assert decisions == [TrialScheduler.CONTINUE] * 4
    assert sched.on_trial_result(None, bad, {"epoch": 1, "objective": 0.1, "finished": 0}) == TrialScheduler.STOP


def test_sweep_of_torch_trainers_gives_back_the_workers_of_a_stopped_trial(ray_cluster, tmp_path, tracking_uri,
                                                                           monkeypatch):
    """Each trial runs a 2-worker TorchTrainer taking 3 of the cluster's 4 CPUs; the scheduler stops
    the second trial after its first epoch. Its workers' placement group must be given back, or the
    third trial would wait for workers forever."""
    import threading

    import ray
    from ray.tune.schedulers import FIFOScheduler

    from rkd.orchestration import tune as sweep_mod

    class StopSecondTrialAtEpoch1(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            stop = trial.config.get("train.lr") == 0.02 and result.get("epoch") == 1
            return self.STOP if stop else self.CONTINUE

    monkeypatch.setattr(sweep_mod, "_scheduler", lambda space: StopSecondTrialAtEpoch1())
    # 6 epochs: the stop (decided on epoch 1's report, which reaches the driver a second or two
    # later) lands well before the stopped trial could finish on its own
    _tiny_base(tmp_path / "base.yaml", tracking_uri, epochs=6,
               extra="scaling: {num_workers: 2, resources_per_worker: {CPU: 1.5}}\n")
    (tmp_path / "space.yaml").write_text("base: base.yaml\nmetric: clean\nscheduler: {name: fifo}\nsearcher: grid\n"
                                         "params: {train.lr: {grid: [0.01, 0.02, 0.03]}}\n")
    out = {}
    worker = threading.Thread(target=lambda: out.update(sweep_mod.run_sweep(tmp_path / "space.yaml", name="s4")),
                              daemon=True)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the sweep stalled: a stopped trial kept its workers' resources"
    by_lr = {t["config"]["train.lr"]: t for t in out["trials"]}
    assert by_lr[0.01]["metrics"]["finished"] == 1 and by_lr[0.03]["metrics"]["finished"] == 1
    assert by_lr[0.02]["metrics"]["finished"] == 0 and by_lr[0.02]["metrics"]["epoch"] == 1
    assert all(t["error"] is None for t in out["trials"])
    assert (tmp_path / "runs" / "s4").is_dir()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rkd").experiment_id],
                              filter_string="tags.`rkd.sweep` = 's4'")
    status = {json.loads(r.data.tags["rkd.sample"])["train.lr"]: r for r in runs}
    assert {k: r.info.status for k, r in status.items()} == {0.01: "FINISHED", 0.02: "KILLED", 0.03: "FINISHED"}
    assert status[0.02].data.tags["rkd.stopped_at_epoch"] == "1"
    assert all(r.data.tags["mlflow.parentRunId"] == out["parent_run_id"] for r in runs)
    assert "robust/white-box/FGSM 8-255" in status[0.03].data.metrics
    deadline = time.time() + 30  # every worker is gone: the cluster's CPUs are all free again
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < 4:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 4


def test_auto_device_is_what_ray_granted(ray_cluster, monkeypatch):
    """A zero-GPU trial resolves ``device: auto`` to the CPU even where the machine has GPUs."""
    import ray

    from rkd.orchestration.tune import granted_device

    assert ray.get(ray.remote(num_cpus=0, num_gpus=0)(granted_device).remote("auto")) == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    assert granted_device("auto") == "cuda" and granted_device("cpu") == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert granted_device("auto") == "cpu" and granted_device("cuda:1") == "cuda:1"
