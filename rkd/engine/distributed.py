"""Data-parallel training over a ``torch.distributed`` process group (pure torch).

Ray Train's TorchTrainer creates the process group (NCCL on GPUs, gloo on CPU); these two
pieces make the generic :class:`~rkd.engine.Trainer` data-parallel inside it:

* :class:`DistributedEpochSampler` -- rank ``r`` of ``W`` takes every ``W``-th index of the same
  (seed, epoch) permutation that :class:`~rkd.engine.EpochShuffleSampler` gives a single process
  (padded by wrapping so every rank has the same number of batches). With ``W = 1`` it *is* the
  single-process order, so a 1-worker run replays a local one.
* :class:`GradientAllReduce` -- after every backward, the gradients of the trainable parameters
  are averaged over the group (one flattened all-reduce per dtype), and the parameters and
  buffers are broadcast from rank 0 when training starts. This is DDP's synchronisation without
  the DDP wrapper: the methods call several entry points of the model (``forward_features``,
  ``forward_intermediates``, input-gradient double backward) that DDP's forward hook would not
  see. Batch-norm statistics stay per rank (DDP's default broadcasts rank 0's at each forward;
  here the saved model is rank 0's, which has its own statistics).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from rkd.engine.callbacks import Callback


class DistributedEpochSampler(Sampler[int]):
    def __init__(self, n: int, rank: int, world_size: int, seed: int = 0, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.rank, self.world, self.seed, self.shuffle, self.epoch = n, rank, world_size, seed, shuffle, 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        order += order[: total - len(order)]  # pad by wrapping: equal batches on every rank
        return iter(order[self.rank:total:self.world])

    def __len__(self) -> int:
        return self.per_rank


class GradientAllReduce(Callback):
    """Average gradients over the default process group after each backward (see module doc)."""

    def on_fit_start(self, trainer):
        if not _active():
            return
        with torch.no_grad():
            for t in list(trainer.method.parameters()) + list(trainer.method.buffers()):
                dist.broadcast(t.data, src=0)

    def on_after_backward(self, trainer):
        if not _active():
            return
        average_gradients(list(trainer.method.trainable_parameters()), dist.get_world_size())


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce the mean gradient of ``params``. Every rank sends the same sizes: a parameter
    without a gradient on this rank (unused in its forward) contributes zeros, and a count of
    the ranks that had one travels along; a parameter no rank used keeps ``grad = None``."""
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        had = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype, device=group[0].device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group] + [had])
        dist.all_reduce(flat)
        flat[: -len(group)] /= world
        offset = 0
        for p, count in zip(group, flat[-len(group):].tolist()):
            piece = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if count == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = piece.clone()
            else:
                p.grad.copy_(piece)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
