"""In-memory, tensor-backed image datasets.

Every dataset in :mod:`rkd.data` is a :class:`TensorImageDataset`: images kept in one tensor
``(N, C, H, W)`` — ``uint8`` (0..255) for datasets that come as bytes (CIFAR, SVHN,
ImageNet32, synthetic) or ``float32`` in ``[0, 1]`` (digits, which are upsampled) — and
``int64`` labels ``(N,)``. Items are ``(float32 image (C, H, W) in [0, 1], int label)``; uint8
storage is converted per item (``/ 255``), or per batch with :meth:`get_batch`.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

Transform = Callable[[torch.Tensor], torch.Tensor]
IndexLike = Union[Sequence[int], torch.Tensor, np.ndarray]


def to_float_images(images: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """uint8 0..255 -> new float32 tensor in 0..1; floating tensors -> float32 (a copy when
    ``copy`` is true, otherwise possibly the same tensor)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32, copy=copy)


class TensorImageDataset(Dataset):
    """Images + labels in memory; yields ``(float32 image in [0, 1], int label)``.

    Args:
        images: ``(N, C, H, W)`` tensor or array, ``uint8`` (0..255) or floating (in ``[0, 1]``).
        labels: ``(N,)`` integer labels in ``0 .. num_classes - 1``.
        transform: optional callable applied to the float ``(C, H, W)`` image of each item
            (e.g. :func:`rkd.data.transforms.train_transform`).
        num_classes: number of classes; default ``labels.max() + 1``.
        classes: optional class names (length ``num_classes``).
        name: a short description, e.g. ``"cifar10/train"``.

    Attributes:
        images, labels, transform, num_classes, classes, name.
    """

    def __init__(
        self,
        images: Union[torch.Tensor, np.ndarray],
        labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
        transform: Optional[Transform] = None,
        num_classes: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
        name: str = "",
    ):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        labels = labels.to(torch.int64).reshape(-1)
        if labels.numel() != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.numel()} labels")
        if num_classes is None:
            num_classes = int(labels.max().item()) + 1 if labels.numel() else 0
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
            )
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.transform = transform
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes is not None else None
        self.name = name

    # ---- Dataset protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = to_float_images(self.images[index], copy=True)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"TensorImageDataset(name={self.name!r}, n={len(self)}, shape={self.image_shape}, "
            f"dtype={self.images.dtype}, num_classes={self.num_classes})"
        )

    # ---- helpers ------------------------------------------------------------------------
    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def get_batch(self, indices: IndexLike, apply_transform: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(float32 images (B, C, H, W) in [0, 1], int64 labels (B,))`` for ``indices``.

        ``apply_transform=True`` applies ``transform`` to the whole batch at once (the
        transforms in :mod:`rkd.data.transforms` accept batches and draw per-sample randomness).
        """
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices, dtype=torch.int64)
        x = to_float_images(self.images.index_select(0, idx))
        if apply_transform and self.transform is not None:
            x = self.transform(x)
        return x, self.labels.index_select(0, idx)

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images as float32 ``[0, 1]`` (no transform) and all labels."""
        return to_float_images(self.images, copy=True), self.labels.clone()

    def class_counts(self) -> torch.Tensor:
        """Number of samples of each class, ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: IndexLike, name: Optional[str] = None) -> "TensorImageDataset":
        """A new dataset holding copies of the selected rows (same transform and classes)."""
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices, dtype=torch.int64)
        return TensorImageDataset(
            self.images.index_select(0, idx),
            self.labels.index_select(0, idx),
            transform=self.transform,
            num_classes=self.num_classes,
            classes=self.classes,
            name=name if name is not None else self.name,
        )

    def with_transform(self, transform: Optional[Transform]) -> "TensorImageDataset":
        """The same data (tensors shared, not copied) with another transform."""
        return TensorImageDataset(
            self.images, self.labels, transform=transform, num_classes=self.num_classes,
            classes=self.classes, name=self.name,
        )

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the data: image dtype, shape and bytes, then the labels.

        The transform and the name are not part of it: two datasets with identical tensors
        have the same fingerprint. Computed on every call (about 0.2 s for CIFAR-10's 150 MB).
        """
        h = hashlib.sha256()
        h.update(f"{self.images.dtype}|{tuple(self.images.shape)}|".encode())
        h.update(np.ascontiguousarray(self.images.numpy()).data)  # no copy for contiguous data
        h.update(b"|labels|")
        h.update(np.ascontiguousarray(self.labels.numpy()).data)
        return h.hexdigest()


__all__ = ["TensorImageDataset", "to_float_images"]
