"""Clean images paired with a fixed transformed copy of themselves (MACD's one-time
adversarial examples), as one dataset whose items carry both.

The pair is stacked along the channel axis, ``(2C, H, W)``: clean first, then the copy. The
training transforms of :mod:`rkd.data.transforms` act on every channel alike, so one random
crop/flip moves the clean image and its adversarial example together -- the pair stays aligned
through augmentation, and the sampler, loader and trainer need no change. The method splits
the channels again (:meth:`rkd.methods.Macd.split`).
"""

from __future__ import annotations

import torch

from .arrays import TensorImageDataset, to_float_images


def paired_dataset(dataset: TensorImageDataset, other: torch.Tensor, name: str | None = None) -> TensorImageDataset:
    """``dataset``'s images with ``other`` (same shape, e.g. their adversarial examples, in the
    same order) stacked behind them along channels; labels and transform are ``dataset``'s."""
    images = to_float_images(dataset.images)
    other = torch.as_tensor(other)
    if tuple(other.shape) != tuple(images.shape):
        raise ValueError(f"paired images must match the dataset: {tuple(other.shape)} vs {tuple(images.shape)}")
    return TensorImageDataset(torch.cat([images, other.to(images.dtype)], dim=1), dataset.labels,
                              transform=dataset.transform, num_classes=dataset.num_classes,
                              classes=dataset.classes, name=name or f"{dataset.name}+paired")
