"""Callbacks extend the training loop (minGPT style): progress, history, checkpoints.

Tracking (MLflow) and Ray reporting are callbacks too, defined in their own layers, so the loop
itself never knows about them. Hooks receive the :class:`~rkd.engine.trainer.Trainer`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Callback:
    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer, epoch: int) -> None: ...
    def on_after_backward(self, trainer) -> None: ...  # gradients computed, optimiser step next
    def on_batch_end(self, trainer, step: int, terms: dict) -> None: ...  # terms: detached tensors
    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer) -> None: ...


class ProgressCallback(Callback):
    """A tqdm bar per epoch on a terminal; one log line per epoch otherwise (CI, Ray logs)."""

    def __init__(self, mode: str = "auto", desc: str = ""):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.desc, self.bar = mode, desc, None

    def on_epoch_start(self, trainer, epoch):
        if trainer.rank != 0:
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.iters_per_epoch, desc=f"{self.desc} epoch {epoch + 1}/{trainer.epochs}",
                            leave=False, dynamic_ncols=True)

    def on_batch_end(self, trainer, step, terms):
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:  # .item() synchronises a GPU: not every step
                self.bar.set_postfix(loss=f"{terms['loss'].item():.3f}")

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "none" and trainer.rank == 0:
            text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.desc}] epoch {epoch + 1}/{trainer.epochs} {text}", file=sys.stderr, flush=True)


class HistoryCallback(Callback):
    """Writes ``trainer.history`` (per-epoch metrics) to a JSON file after every epoch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, epoch, metrics):
        if trainer.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(trainer.history, indent=1))


class CheckpointCallback(Callback):
    """Saves ``epoch_NNN.pt`` every ``every`` epochs (and at the last), keeps the newest ``keep``."""

    def __init__(self, directory: str | Path, every: int = 1, keep: int = 2):
        self.dir, self.every, self.keep = Path(directory), every, keep

    def on_epoch_end(self, trainer, epoch, metrics):
        if (epoch + 1) % self.every and epoch + 1 != trainer.epochs:
            return
        trainer.save_checkpoint(self.dir / f"epoch_{epoch + 1:04d}.pt")
        for old in sorted(self.dir.glob("epoch_*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``epoch_*.pt`` files in ``directory``, oldest first."""
    return sorted(Path(directory).glob("epoch_*.pt"))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None
