"""What every training method is: a module that turns a batch into named loss terms.

A method owns the model being trained (``self.model``), plus whatever else it needs (a frozen
teacher, a projection head). The engine optimises ``trainable_parameters()`` and checkpoints
``trainable_state_dict()``; frozen parts (teachers) are rebuilt from their own source and are
neither optimised, checkpointed nor switched to train mode.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from rkd.engine.precision import attack_precision
from rkd.models.modes import model_mode


@dataclass
class StepOutput:
    """Result of one training step.

    ``loss`` is what is back-propagated; ``terms`` are the named, detached components that are
    logged (the total is always included as ``loss``); ``logits`` (optional) are the model's
    outputs on the examples it was trained on, used for the running train accuracy.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def __post_init__(self):
        self.terms = {"loss": self.loss.detach(), **{k: v.detach() for k, v in self.terms.items()}}


class Method(nn.Module):
    """Base class: subclasses implement :meth:`training_step`."""

    name = "method"
    #: attribute names of frozen sub-modules (never trained, never checkpointed, always eval)
    frozen: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, lr_scale: float) -> None:
        """Called by the trainer before each epoch (0-based ``epoch``; also after a resume) with
        the learning rate of its first step over the configured one, for methods whose loss
        changes with training progress (IAD's start epoch, MTARD's weight rate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def _is_frozen_key(self, key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in self.frozen)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for key, p in self.named_parameters():
            if not self._is_frozen_key(key) and p.requires_grad:
                yield p

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self._is_frozen_key(k)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not self._is_frozen_key(k)]
        if missing or unexpected:
            raise KeyError(f"state does not match method {self.name}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def freeze(module: nn.Module) -> nn.Module:
    """Make a module a fixed function: eval mode, no parameter gradients."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextmanager
def attack_mode(model: nn.Module, training: bool):
    """Context for an inner attack during training: the model in train (True) or eval (False)
    mode, restored on exit, and the step's precision for attacks (:func:`rkd.engine.precision.
    attack_precision`): bf16 autocast is kept, fp16 autocast turned off -- under fp16 the input
    gradients of a PGD step can underflow to zero (sign(0) = 0 = no step) and silently weaken the
    attack; the update's forward pass keeps AMP either way."""
    with model_mode(model, training), attack_precision():
        yield model
