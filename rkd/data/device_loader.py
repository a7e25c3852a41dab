"""A GPU-resident training set: batches gathered and augmented on the training device.

For CIFAR/SVHN/digits-size data the whole set fits in a GPU's memory (CIFAR-10's 50,000
uint8 images are 150 MB), so the host need not gather, convert, augment and copy every batch:
:class:`DeviceLoader` keeps the images on the device once and yields each batch with one
``index_select``, the uint8 -> float conversion and the batched augmentation there.

It yields the same batches as :func:`rkd.data.loader.make_loader` with ``num_workers=0`` for
the same sampler: the order comes from the same sampler, and the augmentations of
:mod:`rkd.data.transforms` draw their random numbers from torch's global CPU generator in the
same order, then move them to the images' device (tested on CPU).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .arrays import TensorImageDataset, to_float_images

#: ``data.on_device: auto`` keeps a training set on a CUDA device up to this many image bytes
AUTO_MAX_BYTES = 2 * 2**30


def fits_on_device(dataset, max_bytes: int = AUTO_MAX_BYTES) -> bool:
    """Whether ``data.on_device: auto`` may keep ``dataset`` on the device: a tensor-backed set
    whose images take at most ``max_bytes``."""
    return isinstance(dataset, TensorImageDataset) and dataset.images.nbytes <= max_bytes


class DeviceLoader:
    """Batches ``(x, y)`` of ``dataset`` in ``sampler`` order, gathered on ``device``.

    Args:
        dataset: a :class:`TensorImageDataset` (its images are copied to ``device`` once, in
            their storage dtype).
        batch_size: images per batch (the last batch may be smaller unless ``drop_last``).
        sampler: the order (e.g. :class:`rkd.engine.EpochShuffleSampler`; its ``set_epoch`` is
            called by the trainer as for a DataLoader).
        device: where the images live and batches are made.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, *, sampler: Sampler,
                 device: torch.device | str, drop_last: bool = False):
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError(f"DeviceLoader needs a TensorImageDataset, got {type(dataset).__name__}")
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)  # (N, C, H, W), uint8 or float32
        self.labels = dataset.labels.to(self.device)  # (N,)
        self.transform = dataset.transform
        self.batch_size, self.sampler, self.drop_last = batch_size, sampler, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a DataLoader draws its workers' base seed from the global generator at each epoch;
        # the same draw here keeps the augmentations' random numbers those of the loader
        torch.empty((), dtype=torch.int64).random_()
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64).to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]  # (B,)
            x = to_float_images(self.images.index_select(0, idx))  # (B, C, H, W) in [0, 1]
            if self.transform is not None:
                x = self.transform(x)
            yield x, self.labels.index_select(0, idx)
