"""Train/eval mode for a stretch of code, restored afterwards (also on error)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in train (True) or eval (False) mode inside the block, its own mode after."""
    saved = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(saved)


def evaluation_mode(model: nn.Module):
    """``model`` in eval mode inside the block (dropout off, batch-norm statistics frozen)."""
    return model_mode(model, False)
