"""Deterministic, stratified splits of a :class:`TensorImageDataset`.

- :func:`half_split`: the papers' "+" / "-" halves (Robust-KD Table 9: a teacher trained on
  CIFAR10+ transfers to a student on CIFAR10-). Per class, the indices are shuffled with a
  seeded ``torch.Generator``; the first ``ceil(n_c / 2)`` go to the first ("+") half, the
  rest to the second ("-"). The halves are disjoint, cover the set, both contain every
  class, and keep the original order of the samples.
- :func:`class_subset`: keep some classes, optionally remapping labels to ``0..k-1``.
- :func:`limit`: a stratified subsample of ``n`` samples for quick runs.

All return a new :class:`TensorImageDataset` (copied rows, same transform), so
``fingerprint()`` identifies the subset.
"""

from __future__ import annotations

from typing import List, Sequence

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
    counts = dataset.class_counts().to(torch.float64)
    exact = counts * n / counts.sum()
    quota = torch.floor(exact).to(torch.int64)
    rest = n - int(quota.sum())
    if rest > 0:
        frac = exact - quota.to(torch.float64)
        order = sorted(range(len(frac)), key=lambda c: (-float(frac[c]), c))
        for c in order[:rest]:
            quota[c] += 1
    parts = [perm[: int(q)] for perm, q in zip(_class_perms(dataset.labels, dataset.num_classes, seed), quota)]
    idx = torch.sort(torch.cat(parts)).values
    return dataset.subset(idx)


__all__ = ["class_subset", "half_split", "half_split_indices", "limit"]
