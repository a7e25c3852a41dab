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
    assert crashed["status"] == "KILLED"  # stopped from outside, as MLflow records it
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
    assert [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "train/loss")] == [1, 2, 3, 4]


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
    assert all("test_acc" in h and "val_acc" not in h for h in out.history)  # no validation split


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


def test_methods_hear_each_epoch_start_with_its_lr_scale_also_after_a_resume(tmp_path):
    """Method.on_epoch_start(epoch, lr of the epoch's first step / train.lr): what IAD's start
    epoch and MTARD's weight rate follow; a resumed run continues the count."""
    from rkd.config.schema import TrainConfig
    from rkd.data import make_synthetic
    from rkd.engine import Trainer
    from rkd.methods import StandardTraining
    from rkd.models import create_model

    class Recording(StandardTraining):
        def __init__(self, model):
            super().__init__(model)
            self.calls = []

        def on_epoch_start(self, epoch, lr_scale):
            self.calls.append((epoch, lr_scale))

    def trainer(epochs):
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=10, width=8, layers=[1, 1, 1, 1])
        cfg = TrainConfig(epochs=epochs, lr=0.1, schedule="step", milestones=[1], lr_decay=0.1, warmup_epochs=0,
                          progress="none")
        return Trainer(Recording(model), make_synthetic(True, n_train=16, seed=0), cfg, batch_size=8)

    t = trainer(2)
    t.fit()
    assert [e for e, _ in t.method.calls] == [0, 1]
    assert [s for _, s in t.method.calls] == pytest.approx([1.0, 0.1])
    t.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = trainer(3)
    resumed.resume(tmp_path / "ckpt.pt")
    resumed.fit()
    assert resumed.method.calls == [(2, pytest.approx(0.1))]


# ------------------------------------------------------- states that crash a CUDA resume (CPU-built)
def _tiny_trainer():
    from rkd.config.schema import TrainConfig
    from rkd.data import make_synthetic
    from rkd.engine import Trainer
    from rkd.methods import StandardTraining
    from rkd.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=4, layers=[1, 1, 1, 1])
    data = make_synthetic(True, n_train=16, seed=0)
    return Trainer(StandardTraining(model), data, TrainConfig(epochs=1, warmup_epochs=0, progress="none"),
                   batch_size=8)


def test_resume_with_amp_from_a_checkpoint_without_scaler_state(tmp_path):
    """A CPU / AMP-off checkpoint stores an empty scaler state; an AMP run resuming it keeps its
    fresh scaler instead of raising (GradScaler.load_state_dict({}) is a RuntimeError)."""
    t = _tiny_trainer()
    t.fit()
    path = t.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = _tiny_trainer()
    resumed.scaler = torch.amp.GradScaler("cpu", enabled=True)  # what amp: true gets on CUDA
    assert resumed.scaler.state_dict() and not t.scaler.state_dict()
    resumed.resume(path)
    assert resumed.scaler.is_enabled() and resumed.start_epoch == 1


def test_cuda_rng_state_of_more_devices_than_this_process_sees(monkeypatch):
    """A checkpoint saved by a process that saw 4 GPUs, resumed where 1 is visible: device 0's
    state is restored, the others are dropped (set_rng_state_all would raise IndexError)."""
    from rkd.engine import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: (_ for _ in ()).throw(IndexError()))
    state = {**checkpoint.get_rng_state(), "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]}
    checkpoint.set_rng_state(state)
    assert [d for d, _ in restored] == [0] and torch.equal(restored[0][1], state["cuda"][0])


def _reduce_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from rkd.engine.distributed import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    used, unused_here, unused_everywhere = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    used.grad = torch.full((3,), float(rank + 1))
    if rank == 0:  # a parameter only rank 0's forward used
        unused_here.grad = torch.full((3,), 4.0)
    average_gradients([used, unused_here, unused_everywhere], world)
    torch.save({"used": used.grad, "unused_here": unused_here.grad, "none": unused_everywhere.grad},
               f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_gradient_all_reduce_with_a_parameter_unused_on_one_rank(tmp_path):
    """Rank 1 has no gradient for a parameter rank 0 used: both ranks still send the same sizes
    (gloo would abort, NCCL hang) and end with the same mean gradient; a parameter no rank used
    keeps grad None."""
    import torch.multiprocessing as mp

    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    for g in got:
        assert torch.equal(g["used"], torch.full((3,), 1.5))
        assert torch.equal(g["unused_here"], torch.full((3,), 2.0))  # (4 + 0) / 2, as DDP averages
        assert g["none"] is None


def test_random_projections_drawn_on_the_generator_device(monkeypatch):
    """A CPU generator with features on another device (CUDA; meta stands in for it here, and
    torch.randn records where it was asked to draw): the draw happens on the generator's device
    (torch refuses a CPU generator for a CUDA tensor), the result lands on the features'."""
    from rkd.losses import jacobian

    asked, real_randn = [], torch.randn
    monkeypatch.setattr(jacobian.torch, "randn", lambda *a, **k: asked.append(k["device"]) or real_randn(*a, **k))
    feats = torch.empty(2, 3, 4, device="meta")
    v = jacobian.random_unit_like(feats, torch.Generator().manual_seed(0))
    assert [torch.device(d).type for d in asked] == ["cpu"]
    assert v.device.type == "meta" and v.shape == feats.shape
    random_unit_like = jacobian.random_unit_like
    on_cpu = random_unit_like(torch.empty(2, 3, 4), torch.Generator().manual_seed(0))
    assert torch.allclose(on_cpu.flatten(1).norm(dim=1), torch.ones(2))
