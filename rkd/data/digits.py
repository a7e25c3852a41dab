"""scikit-learn's bundled handwritten digits as a 32x32 RGB dataset (offline, no download).

``sklearn.datasets.load_digits``: 1797 grey 8x8 images, values 0..16, 10 classes (174..183
per class). Processing: ``/ 16`` -> ``[0, 1]``; bilinear upsampling to ``image_size``
(default 32, ``align_corners=False``, no antialias); the single channel repeated to 3
channels; stored as float32 (upsampling gives non-integer levels, so no uint8 rounding).

Split: stratified, deterministic (``sklearn.model_selection.train_test_split`` with
``stratify=labels``, ``random_state=seed``). With the defaults ``test_fraction=0.2`` and
``seed=0``: **1437 train / 360 test** images; every call returns the same split.

Digits must not be flipped (``dataset_info("digits").hflip`` is ``False``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import TensorImageDataset, Transform

DIGITS_TRAIN_SIZE = 1437
DIGITS_TEST_SIZE = 360


def digits_split_indices(test_fraction: float = 0.2, seed: int = 0):
    """``(train_idx, test_idx)`` numpy arrays of the deterministic stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=y, shuffle=True
    )
    return np.sort(train_idx), np.sort(test_idx)


def load_digits_dataset(
    train: bool = True,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 3,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """The digits train or test split as a :class:`TensorImageDataset` ``(channels, S, S)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = digits_split_indices(test_fraction, seed)
    idx = torch.as_tensor(train_idx if train else test_idx, dtype=torch.int64)
    x = images.index_select(0, idx)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).repeat(1, channels, 1, 1).contiguous()  # (N, channels, S, S)
    return TensorImageDataset(
        x,
        labels.index_select(0, idx),
        transform=transform,
        num_classes=10,
        classes=[str(i) for i in range(10)],
        name=f"digits/{'train' if train else 'test'}",
    )


__all__ = ["DIGITS_TEST_SIZE", "DIGITS_TRAIN_SIZE", "digits_split_indices", "load_digits_dataset"]
