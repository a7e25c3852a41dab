"""Deterministic, stratified splits of a :class:`TensorImageDataset`.

- :func:`half_split`: the papers' "+" / "-" halves (Robust-KD Table 9: a teacher trained on
  CIFAR10+ transfers to a student on CIFAR10-). Per class, the indices are shuffled with a
  seeded ``torch.Generator``; the first ``ceil(n_c / 2)`` go to the first ("+") half, the
  rest to the second ("-"). The halves are disjoint, cover the set, both contain every
  class, and keep the original order of the samples.
- :func:`class_subset`: keep some classes, optionally remapping labels to ``0..k-1``.
- :func:`limit`: a stratified subsample of ``n`` samples for quick runs.
- :func:`validation_split`: hold a stratified validation set out of a training set (the
  ``data.val_size`` of a config): the same seeded per-class order as the halves, class quotas
  as :func:`limit`'s; returns ``(train, validation)``, disjoint and covering the set.

All return a new :class:`TensorImageDataset` (copied rows, same transform), so
``fingerprint()`` identifies the subset.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from .arrays import TensorImageDataset

_FIRST = {"first", "+", "plus"}
_SECOND = {"second", "-", "minus"}


def _check(dataset) -> None:
    if not isinstance(dataset, TensorImageDataset):
        raise TypeError(f"expected a TensorImageDataset, got {type(dataset).__name__}")


def _class_perms(labels: torch.Tensor, num_classes: int, seed: int) -> List[torch.Tensor]:
    """For each class, its sample indices in a seeded random order."""
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        out.append(idx[torch.randperm(idx.numel(), generator=g)])
    return out


def half_split_indices(labels: torch.Tensor, num_classes: int, half: str, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``half`` (see :func:`half_split`)."""
    key = str(half).lower()
    if key not in _FIRST | _SECOND:
        raise ValueError(f"half must be 'first'/'+' or 'second'/'-', got {half!r}")
    parts = []
    for perm in _class_perms(labels, num_classes, seed):
        k = (perm.numel() + 1) // 2
        parts.append(perm[:k] if key in _FIRST else perm[k:])
    return torch.sort(torch.cat(parts)).values if parts else torch.zeros(0, dtype=torch.int64)


def half_split(dataset: TensorImageDataset, half: str, seed: int = 0) -> TensorImageDataset:
    """The ``"first"``/``"+"`` or ``"second"``/``"-"`` half of ``dataset``, stratified per class.

    Deterministic for a given ``seed``; the first half gets the extra sample of odd-sized
    classes.
    """
    _check(dataset)
    idx = half_split_indices(dataset.labels, dataset.num_classes, half, seed)
    sign = "+" if str(half).lower() in _FIRST else "-"
    return dataset.subset(idx, name=f"{dataset.name}{sign}")


def class_subset(dataset: TensorImageDataset, classes: Sequence[int], remap: bool = True) -> TensorImageDataset:
    """Only the samples whose label is in ``classes``.

    With ``remap=True`` labels become ``0..k-1`` in the order of ``classes`` (``classes[i]``
    -> ``i``), ``num_classes`` becomes ``k`` and class names follow; with ``remap=False``
    labels and ``num_classes`` are unchanged.
    """
    _check(dataset)
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError("classes contains duplicates")
    if any(c < 0 or c >= dataset.num_classes for c in classes):
        raise ValueError(f"classes must lie in 0..{dataset.num_classes - 1}, got {classes}")
    keep = torch.as_tensor(classes, dtype=torch.int64)
    idx = torch.nonzero(torch.isin(dataset.labels, keep), as_tuple=False).flatten()
    sub = dataset.subset(idx)
    if not remap:
        return sub
    table = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    table[keep] = torch.arange(len(classes))
    names = [dataset.classes[c] for c in classes] if dataset.classes is not None else None
    return TensorImageDataset(
        sub.images, table[sub.labels], transform=dataset.transform, num_classes=len(classes),
        classes=names, name=dataset.name,
    )


def _quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Per-class quotas summing to ``n``, proportional to ``counts`` (largest-remainder
    rounding, ties to the lower class id)."""
    counts = counts.to(torch.float64)
    exact = counts * n / counts.sum()
    quota = torch.floor(exact).to(torch.int64)
    rest = n - int(quota.sum())
    if rest > 0:
        frac = exact - quota.to(torch.float64)
        order = sorted(range(len(frac)), key=lambda c: (-float(frac[c]), c))
        for c in order[:rest]:
            quota[c] += 1
    return quota


def limit(dataset: TensorImageDataset, n: int, seed: int = 0) -> TensorImageDataset:
    """A deterministic stratified subsample of ``n`` samples (``dataset`` itself if ``n >= len``).

    Class quotas are proportional to class frequency (largest-remainder rounding, ties to the
    lower class id); within a class the samples are a seeded random choice; original order kept.
    """
    _check(dataset)
    n = int(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    if n >= len(dataset):
        return dataset
    quota = _quotas(dataset.class_counts(), n)
    parts = [perm[: int(q)] for perm, q in zip(_class_perms(dataset.labels, dataset.num_classes, seed), quota)]
    idx = torch.sort(torch.cat(parts)).values
    return dataset.subset(idx)


def validation_count(n: int, size: float) -> int:
    """How many of ``n`` training images a validation split of ``size`` holds out: ``size``
    itself when it is >= 1 (a count; it must be a whole number), ``round(size * n)`` (at least 1)
    for a fraction ``0 < size < 1``, 0 for ``size == 0``."""
    size = float(size)
    if size < 0 or not math.isfinite(size):
        raise ValueError(f"val_size must be a count or a fraction >= 0, got {size:g}")
    if size == 0:
        return 0
    if size >= 1:
        if not size.is_integer():
            raise ValueError(f"val_size {size:g} is neither a fraction (< 1) nor a whole count")
        return int(size)
    return max(1, int(math.floor(size * n + 0.5)))


def validation_split_indices(labels: torch.Tensor, num_classes: int, size: float,
                             seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(train, validation)`` indices of a stratified validation split (see
    :func:`validation_split`)."""
    n = int(labels.numel())
    k = validation_count(n, size)
    counts = torch.bincount(labels, minlength=num_classes)
    if k >= n:
        raise ValueError(f"val_size {size:g} holds out {k} of the {n} training images: nothing is left to train on")
    quota = _quotas(counts, k) if k else torch.zeros(num_classes, dtype=torch.int64)
    starved = [c for c in range(num_classes) if counts[c] > 0 and quota[c] >= counts[c]]
    if starved:
        c = starved[0]
        raise ValueError(f"val_size {size:g} holds out all {int(counts[c])} training images of class {c} "
                         f"({len(starved)} class(es) left without training data); choose a smaller val_size")
    train, val = [], []
    for perm, q in zip(_class_perms(labels, num_classes, seed), quota):
        val.append(perm[: int(q)])
        train.append(perm[int(q):])
    empty = torch.zeros(0, dtype=torch.int64)
    return (torch.sort(torch.cat(train)).values if train else empty,
            torch.sort(torch.cat(val)).values if val else empty)


def validation_split(dataset: TensorImageDataset, size: float,
                     seed: int = 0) -> Tuple[TensorImageDataset, TensorImageDataset | None]:
    """``(train, validation)``: ``validation`` holds :func:`validation_count` images of
    ``dataset`` out, stratified (class quotas proportional to class frequency, as in
    :func:`limit`; within a class a seeded random choice, as in :func:`half_split`), ``train``
    is the rest; both keep the original order. The validation set is never augmented (no
    transform); ``train`` keeps the dataset's. ``size == 0``: ``(dataset, None)``.

    Deterministic for a given ``seed`` (its own ``torch.Generator``: the global RNG is neither
    read nor advanced), so every rank, worker and resume carves the same split. Raises
    ValueError when the split would leave no training image, or none of some class.
    """
    _check(dataset)
    if validation_count(len(dataset), size) == 0:
        return dataset, None
    train_idx, val_idx = validation_split_indices(dataset.labels, dataset.num_classes, size, seed)
    val = dataset.subset(val_idx, name=f"{dataset.name}[validation]").with_transform(None)
    return dataset.subset(train_idx), val


__all__ = ["class_subset", "half_split", "half_split_indices", "limit", "validation_count", "validation_split",
           "validation_split_indices"]
