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


@contextmanager
def batchnorm_statistics_kept(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as it is (train-mode batch statistics still normalise each batch), but every
    batch-norm layer's running statistics (``running_mean``, ``running_var``,
    ``num_batches_tracked``) are put back after the block: a forward pass made only to compute a
    target leaves no trace in the model."""
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    try:
        yield model
    finally:
        for m, buffers in saved:
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
