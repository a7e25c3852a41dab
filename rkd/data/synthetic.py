"""A seeded synthetic image-classification set for tests and smoke runs (no files needed).

Each class ``k`` has a prototype: a random ``4x4`` colour pattern, bilinearly upsampled to
``image_size`` and scaled into ``[0.15, 0.85]``. A sample is its class prototype plus
Gaussian pixel noise (std ``noise``), clipped to ``[0, 1]`` and stored as uint8. Classes are
balanced (``i % num_classes``, then shuffled). A tiny CNN separates the classes within a few
optimisation steps.

Determinism: prototypes, train samples and test samples come from three independent numpy
streams spawned from ``seed`` (``np.random.SeedSequence(seed).spawn(3)``), so the train and
test splits share prototypes, are independent of each other, and are identical across calls
and machines for the same arguments.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import TensorImageDataset, Transform


def _prototypes(rng: np.random.Generator, num_classes: int, channels: int, image_size: int) -> torch.Tensor:
    low = torch.as_tensor(rng.random((num_classes, channels, 4, 4)), dtype=torch.float32)
    up = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return 0.15 + 0.7 * up  # (K, C, S, S) in [0.15, 0.85]


def make_synthetic(
    train: bool = True,
    *,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    noise: float = 0.15,
    seed: int = 0,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """The train (``n_train`` images) or test (``n_test``) split of the synthetic set."""
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")
    ss_proto, ss_train, ss_test = np.random.SeedSequence(seed).spawn(3)
    protos = _prototypes(np.random.default_rng(ss_proto), num_classes, channels, image_size)
    n = n_train if train else n_test
    rng = np.random.default_rng(ss_train if train else ss_test)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    eps = torch.as_tensor(rng.standard_normal((n, channels, image_size, image_size)), dtype=torch.float32)
    lab = torch.as_tensor(labels, dtype=torch.int64)
    x = (protos[lab] + noise * eps).clamp_(0.0, 1.0)
    images = torch.round(x * 255.0).to(torch.uint8)
    return TensorImageDataset(
        images, lab, transform=transform, num_classes=num_classes,
        name=f"synthetic/{'train' if train else 'test'}",
    )


__all__ = ["make_synthetic"]
