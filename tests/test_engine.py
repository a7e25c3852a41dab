"""Training loop, checkpoints and resume."""

from __future__ import annotations

import json

import pytest
import torch

from mlflow import MlflowClient

from rkd.config import load_config
from rkd.engine import Callback, CheckpointError, EpochShuffleSampler, atomic_torch_save, verified_torch_load
from rkd.experiment import run_experiment


class StopAfter(Callback):
    """Simulates a crash after ``n`` epochs (after the checkpoint of that epoch is written)."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt("simulated crash")


class LrRecorder(Callback):
    def __init__(self):
        self.lrs = []

    def on_batch_end(self, trainer, step, terms):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def _weights(run_dir):
    return verified_torch_load(run_dir / "model.pt")


def test_resume_mid_run_matches_uninterrupted(tmp_path, tiny_overrides):
    # adversarial training: exercises the RNG (random start, augmentation) and the LR schedule
    over = tiny_overrides + ["train.epochs=4", "method.name=adversarial", "method.attack.steps=2",
                             "data.augment=true", "eval.enabled=false"]
    cfg = load_config("preset:digits_adversarial", over)
    full = run_experiment(cfg, run_dir=tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run_dir=tmp_path / "split", callbacks=[StopAfter(2)])
    assert not (tmp_path / "split" / "model.pt").exists()
    crashed = json.loads((tmp_path / "split" / "run.json").read_text())
    assert crashed["status"] == "FAILED"
    resumed = run_experiment(cfg, run_dir=tmp_path / "split", resume=True)

    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], abs=0)
    # the resumed run is the crashed run's MLflow run, now FINISHED: one run, not two
    assert resumed.mlflow_run_id == crashed["mlflow_run_id"]
    client = MlflowClient(cfg.tracking.tracking_uri)
    assert client.get_run(resumed.mlflow_run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert len(client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'digits-adversarial'")) == 2
    assert [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "train_loss")] == [1, 2, 3, 4]


def test_checkpoint_corruption_is_detected(tmp_path):
    path = atomic_torch_save({"w": torch.arange(1000.0)}, tmp_path / "c.pt")
    assert torch.equal(verified_torch_load(path)["w"], torch.arange(1000.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        verified_torch_load(path)
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        verified_torch_load(path)
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum"):
        verified_torch_load(path)
    with pytest.raises(CheckpointError, match="not found"):
        verified_torch_load(tmp_path / "missing.pt")


def test_checkpoints_load_with_weights_only(tmp_path, tiny_overrides):
    cfg = load_config("preset:digits_standard", tiny_overrides + ["eval.enabled=false", "train.keep_checkpoints=1"])
    out = run_experiment(cfg, run_dir=tmp_path / "r")
    ckpts = sorted((out.run_dir / "checkpoints").glob("epoch_*.pt"))
    assert [c.name for c in ckpts] == ["epoch_0002.pt"]  # only the newest kept
    state = torch.load(ckpts[0], weights_only=True)  # raises if anything unsafe were pickled
    assert state["epoch"] == 2 and {"method", "optimizer", "scheduler", "rng"} <= state.keys()


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_overrides):
    cfg = load_config("preset:digits_standard", tiny_overrides)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_experiment(cfg, run_dir=tmp_path / "empty", resume=True)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    s = EpochShuffleSampler(50, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    t = EpochShuffleSampler(50, seed=3)
    t.set_epoch(1)
    assert list(t) == first and sorted(first) == list(range(50))


def test_training_reduces_loss_and_schedule_ends_at_zero(tmp_path, tiny_overrides):
    cfg = load_config("preset:digits_standard", tiny_overrides + ["train.epochs=4", "eval.enabled=false",
                                                                   "data.limit_train=128", "train.lr=0.05"])
    rec = LrRecorder()
    out = run_experiment(cfg, run_dir=tmp_path / "r", callbacks=[rec])
    losses = [h["train_loss"] for h in out.history]
    assert losses[-1] < losses[0]
    assert rec.lrs[-1] == pytest.approx(0.0, abs=1e-9)  # cosine to zero over all iterations
    assert all(a >= b for a, b in zip(rec.lrs, rec.lrs[1:]))
    assert all("val_acc" in h for h in out.history)


def test_step_schedule_decays_at_the_epoch_milestone_and_amp_runs(tmp_path, tiny_overrides):
    cfg = load_config("preset:digits_standard", tiny_overrides + [
        "train.epochs=3", "train.amp=true", "train.schedule=step", "train.milestones=[2]", "train.lr_decay=0.5",
        "eval.enabled=false", "train.grad_clip=1.0", "data.limit_train=64", "data.batch_size=16"])
    rec = LrRecorder()
    out = run_experiment(cfg, run_dir=tmp_path / "r", callbacks=[rec])
    lr = cfg.train.lr  # the LR in force *after* each of the 12 steps (4 per epoch)
    assert rec.lrs == pytest.approx([lr] * 7 + [lr * 0.5] * 5)
    assert [h["lr"] for h in out.history] == pytest.approx([lr, lr, lr * 0.5])  # LR the epoch trained at
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in out.history)


def test_a_used_run_dir_is_refused_and_a_corrupt_checkpoint_skipped(tmp_path, tiny_overrides):
    cfg = load_config("preset:digits_standard", tiny_overrides + ["eval.enabled=false", "train.epochs=3"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run_dir=tmp_path / "r", callbacks=[StopAfter(2)])
    with pytest.raises(FileExistsError, match="not empty"):
        run_experiment(cfg, run_dir=tmp_path / "r")
    newest = tmp_path / "r" / "checkpoints" / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncate the newest checkpoint
    with pytest.warns(UserWarning, match="corrupt"):
        out = run_experiment(cfg, run_dir=tmp_path / "r", resume=True)
    assert [h["epoch"] for h in out.history] == [1, 2, 3]  # epoch 2 re-run from epoch 1's checkpoint


def test_diverged_training_fails_with_a_clear_error_and_a_failed_run(tmp_path, tiny_overrides):
    """A loss that becomes non-finite stops the run (instead of training on NaN weights), names
    the epoch (1-based, as logged) and the loss terms, and leaves the run marked FAILED."""
    cfg = load_config("preset:digits_standard", tiny_overrides + ["train.lr=1e30", "eval.enabled=false"])
    with pytest.raises(FloatingPointError, match=r"non-finite loss in epoch 1 \(loss=.*ce="):
        run_experiment(cfg, run_dir=tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "FAILED" and "FloatingPointError" in run["error"]
    run_info = MlflowClient(cfg.tracking.tracking_uri).get_run(run["mlflow_run_id"]).info
    assert run_info.status == "FAILED"


def test_a_method_without_logits_trains_and_reports_no_accuracy():
    """An MAE has no classifier: the trainer runs it and leaves train_acc out (not 0)."""
    from rkd.config.schema import TrainConfig
    from rkd.data import make_synthetic
    from rkd.engine import Trainer
    from rkd.methods import MaeTraining
    from rkd.models import create_model

    torch.manual_seed(0)
    teacher = create_model("mae_vit_tiny", embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2)
    data = make_synthetic(True, n_train=32, seed=0)
    t = Trainer(MaeTraining(teacher), data, TrainConfig(epochs=2, optimizer="adamw", lr=1e-3, progress="none"),
                batch_size=16)
    hist = t.fit()
    assert "train_acc" not in hist[0] and hist[1]["train_recon"] < hist[0]["train_recon"]
