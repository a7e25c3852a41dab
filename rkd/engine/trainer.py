"""The training loop: one generic trainer, extended by callbacks.

It knows nothing of methods beyond :class:`rkd.methods.Method` (``training_step`` returning named
loss terms) and nothing of MLflow or Ray. The same object runs on one device in-process, inside
a Ray Train worker (given a distributed sampler and a wrapped method) or inside a Tune trial.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset, Sampler

from rkd.data.device_loader import DeviceLoader, fits_on_device
from rkd.data.loader import make_loader
from rkd.engine.callbacks import Callback
from rkd.engine.checkpoint import CheckpointError, atomic_torch_save, get_rng_state, set_rng_state, verified_torch_load
from rkd.engine.optim import build_optimizer, build_scheduler
from rkd.engine.precision import Precision, apply_backend_settings, compile_in_place, resolve_auto
from rkd.engine.sampler import EpochShuffleSampler

CHECKPOINT_FORMAT = 1


class Trainer:
    """Train ``method`` on ``train_set`` for ``cfg.epochs`` epochs.

    Args:
        method: the :class:`~rkd.methods.Method` (owns the model and any frozen teacher).
        train_set: a dataset of ``(image in [0,1], label)``.
        cfg: the ``train`` config section (epochs, optimiser, schedule, amp, grad_clip, and the
            speed settings tf32, cudnn_benchmark, fused_optimizer, compile).
        batch_size: per-process batch size.
        device: torch device for the method and batches.
        seed: drives the shuffling order (with the epoch) so resume replays the same batches.
        callbacks: :class:`~rkd.engine.callbacks.Callback` instances, called in order.
        eval_fn: optional ``eval_fn(model) -> dict`` run every ``cfg.eval_every`` epochs
            (e.g. clean test accuracy); its keys are added to the epoch metrics.
        sampler: override the sampler (Ray Train passes a DistributedSampler).
        rank: process rank; callbacks that write (checkpoints, tracking) act on rank 0 only.
        fp32_only: the method's step must stay in fp32: ``tf32: auto`` stays off, no compile.
        data_on_device: keep the training set on ``device`` (:class:`rkd.data.device_loader.
            DeviceLoader`); ``"auto"``: on CUDA when it fits.
    """

    def __init__(self, method, train_set: Dataset, cfg, *, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, callbacks: Iterable[Callback] = (), eval_fn: Callable | None = None,
                 sampler: Sampler | None = None, num_workers: int = 0, rank: int = 0, fp32_only: bool = False,
                 data_on_device: bool | str = False):
        self.method = method.to(device)
        self.cfg, self.device, self.rank = cfg, torch.device(device), rank
        self.epochs = cfg.epochs
        self.callbacks = list(callbacks)
        self.eval_fn = eval_fn
        self.sampler = sampler or EpochShuffleSampler(len(train_set), seed=seed)
        self.loader = self._make_loader(train_set, batch_size, num_workers, data_on_device)
        self.iters_per_epoch = len(self.loader)
        self.settings = self._speed_settings(fp32_only)
        self.optimizer = build_optimizer(method.trainable_parameters(), cfg, fused=self.settings["fused_optimizer"])
        self.scheduler = build_scheduler(self.optimizer, cfg, self.iters_per_epoch)
        self.precision = Precision.from_setting(cfg.amp, self.device)
        self.scaler = self.precision.scaler
        self.settings["amp"] = self.precision.name
        self.start_epoch = 0
        self.global_step = 0
        self.history: list[dict] = []
        self.wall_time = 0.0  # seconds spent in fit() (accumulated across resumes)

    def _make_loader(self, train_set, batch_size: int, num_workers: int, on_device: bool | str):
        if resolve_auto(on_device, self.device, fits_on_device(train_set)):
            return DeviceLoader(train_set, batch_size, sampler=self.sampler, device=self.device)
        return make_loader(train_set, batch_size, sampler=self.sampler, num_workers=num_workers,
                           pin_memory=self.device.type == "cuda")

    def _speed_settings(self, fp32_only: bool) -> dict:
        """TF32, cuDNN's autotuner (process-wide), the fused optimiser and torch.compile, as
        resolved for this device and method (rkd.engine.precision); recorded in ``settings``."""
        cfg, device = self.cfg, self.device
        settings = apply_backend_settings(tf32=resolve_auto(cfg.tf32, device, not fp32_only),
                                          cudnn_benchmark=resolve_auto(cfg.cudnn_benchmark, device))
        settings["fused_optimizer"] = resolve_auto(cfg.fused_optimizer, device)
        settings["compile"] = bool(cfg.compile) and not fp32_only
        if settings["compile"]:
            compile_in_place(self.method.model)
        settings["data_on_device"] = isinstance(self.loader, DeviceLoader)
        return settings

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.method.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.start_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "wall_time": self.wall_time,
            "rng": get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {state.get('format')!r}")
        try:
            self.method.load_trainable_state_dict(state["method"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint does not fit this model/method: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():  # a CPU or AMP-off run saved an empty state
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.wall_time = float(state.get("wall_time", 0.0))
        set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | Path) -> Path | None:
        if self.rank != 0:
            return None
        return atomic_torch_save(self.state_dict(), path)

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint (checksum-verified) and continue after its epoch.

        Loaded on CPU: RNG states must stay CPU tensors; model and optimiser states are moved
        to their parameters' device by ``load_state_dict``."""
        self.load_state_dict(verified_torch_load(path, map_location="cpu"))

    # -------------------------------------------------------------------------------- loop
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.method.train()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        lr_at_start = self.optimizer.param_groups[0]["lr"]
        self.method.on_epoch_start(epoch, lr_at_start / self.cfg.lr)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen = scored = 0
        for step, (x, y) in enumerate(self.loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self.precision.step():
                out = self.method.training_step(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self._call("on_after_backward")
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(list(self.method.trainable_parameters()), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            n = y.shape[0]
            seen += n
            for k, v in out.terms.items():
                sums[k] = sums.get(k, 0.0) + v.float() * n
            if out.logits is not None:
                correct += (out.logits.argmax(1) == y).sum()
                scored += n
            self._call("on_batch_end", step, out.terms)
        metrics = {f"train_{k}": (v / max(seen, 1)).item() for k, v in sums.items()}
        if not math.isfinite(metrics.get("train_loss", 0.0)):
            # checked once per epoch (a per-step check would synchronise the GPU every step)
            terms = ", ".join(f"{k[6:]}={v:.4g}" for k, v in metrics.items())
            message = (f"training diverged: non-finite loss in epoch {epoch + 1} ({terms}); "
                       "lower the learning rate or the loss weights")
            if getattr(self.cfg, "on_divergence", "error") == "error":
                raise FloatingPointError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        if scored:  # methods without logits (an MAE) have no train accuracy
            metrics["train_acc"] = correct.item() / scored
        metrics["lr"] = lr_at_start  # the LR of the epoch's first step (per-iteration schedule)
        return metrics

    def fit(self) -> list[dict]:
        """Run the remaining epochs; returns the per-epoch metric history."""
        self._call("on_fit_start")
        for epoch in range(self.start_epoch, self.epochs):
            self._call("on_epoch_start", epoch)
            t0 = time.perf_counter()
            metrics = self.train_one_epoch(epoch)
            elapsed = time.perf_counter() - t0
            self.wall_time += elapsed
            metrics["epoch_time_s"] = elapsed
            if self.eval_fn is not None and self.cfg.eval_every and (
                (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.epochs
            ):
                metrics.update(self.eval_fn(self.method.model))
            self.start_epoch = epoch + 1
            self.history.append({"epoch": epoch + 1, **metrics})
            self._call("on_epoch_end", epoch, metrics)
        self._call("on_fit_end")
        return self.history
