"""Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017) from the official npz files.

Layout (the official ``Imagenet32_train_npz.zip`` / ``Imagenet32_val_npz.zip``): files
``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``, each with

- ``data``: ``(N, 3072)`` uint8, channel-planar: R (1024 values, row-major 32x32), then G,
  then B — so ``data.reshape(N, 3, 32, 32)`` is already NCHW;
- ``labels``: ``(N,)`` ints, **1-based** ``1..1000`` (converted here to ``0..999``);
- ``mean`` (optional, train only): ignored.

Search order for the files: ``<root>/``, ``<root>/imagenet32/``, then
``<root>/Imagenet32_train_npz/`` (train) or ``<root>/Imagenet32_val_npz/`` (val): the first
directory holding at least one matching file is used. For training, whatever batches exist
are loaded (at least one is needed), unless ``train_batches`` names them. There is no
automatic download (ImageNet needs a login): a missing set raises
:class:`DatasetNotFoundError` naming ``<root>/train_data_batch_1.npz`` (or ``val_data.npz``).

The full training set is 1,281,167 images (3.9 GB as uint8). ``max_classes=k`` keeps the
first ``k`` classes (0-based ids ``0..k-1``), or ``classes=[...]`` an explicit subset whose
labels are remapped to ``0..len(classes)-1`` in the order given; rows of other classes are
dropped per file, so memory stays proportional to the subset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from .arrays import TensorImageDataset, Transform
from .errors import DatasetNotFoundError

PathLike = Union[str, Path]
NUM_TRAIN_BATCHES = 10


def _candidate_dirs(root: Path, train: bool) -> List[Path]:
    sub = "Imagenet32_train_npz" if train else "Imagenet32_val_npz"
    return [root, root / "imagenet32", root / sub, root / "imagenet32" / sub]


def _find_files(root: Path, train: bool, train_batches: Optional[Sequence[int]]) -> List[Path]:
    names = (
        [f"train_data_batch_{i}.npz" for i in (train_batches or range(1, NUM_TRAIN_BATCHES + 1))]
        if train
        else ["val_data.npz"]
    )
    for d in _candidate_dirs(root, train):
        found = [d / n for n in names if (d / n).is_file()]
        if found:
            if train_batches is not None and len(found) != len(names):
                missing = [n for n in names if not (d / n).is_file()]
                raise DatasetNotFoundError("imagenet32", d, missing, hint=_HINT)
            return found
    raise DatasetNotFoundError("imagenet32", root / names[0], hint=_HINT)


def require_imagenet32(root: Path, train: bool) -> None:
    """DatasetNotFoundError if the split's npz files are not under ``root`` (reads nothing)."""
    _find_files(root, train, None)


_HINT = (
    "ImageNet32 cannot be downloaded automatically (data.download=true does not apply: "
    "ImageNet needs a login at image-net.org); place the official npz files "
    "(train_data_batch_1..10.npz, val_data.npz) there."
)


def decode_rows(data: np.ndarray) -> np.ndarray:
    """``(N, 3*S*S)`` channel-planar rows -> ``(N, 3, S, S)`` (a view when possible)."""
    n, d = data.shape
    side = int(round(math.sqrt(d // 3)))
    if 3 * side * side != d:
        raise ValueError(f"rows of length {d} are not 3 x S x S")
    return data.reshape(n, 3, side, side)


def load_imagenet32(
    root: PathLike,
    train: bool = True,
    *,
    max_classes: Optional[int] = None,
    classes: Optional[Sequence[int]] = None,
    train_batches: Optional[Sequence[int]] = None,
    download: bool = False,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """ImageNet32 train (all available batches) or validation (50000) split, uint8 ``(3, 32, 32)``.

    Args:
        root: directory holding the npz files (see module docstring for the search order).
        train: training batches or ``val_data.npz``.
        max_classes: keep classes ``0..max_classes-1`` (0-based) only.
        classes: keep these 0-based class ids, remapped to ``0..k-1`` in the given order.
        train_batches: which ``train_data_batch_<i>.npz`` to load (default: all present).
        download: must be false (there is no automatic download).
    """
    if download:
        raise ValueError("imagenet32 cannot be downloaded automatically; " + _HINT)
    if max_classes is not None and classes is not None:
        raise ValueError("give max_classes or classes, not both")
    keep: Optional[np.ndarray] = None
    if max_classes is not None:
        keep = np.arange(int(max_classes))
    elif classes is not None:
        keep = np.asarray([int(c) for c in classes], dtype=np.int64)
        if len(set(keep.tolist())) != len(keep):
            raise ValueError("classes contains duplicates")
    if keep is not None and (keep.min() < 0 or keep.max() >= 1000):
        raise ValueError("class ids must be 0-based, in 0..999")
    remap = None
    if keep is not None:
        remap = np.full(1000, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))

    files = _find_files(Path(root).expanduser(), train, train_batches)
    images, labels = [], []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            data = np.asarray(z["data"], dtype=np.uint8)
            lab = np.asarray(z["labels"], dtype=np.int64).reshape(-1) - 1  # 1-based -> 0-based
        if lab.min(initial=0) < 0 or lab.max(initial=0) >= 1000:
            raise ValueError(f"{f}: labels outside 1..1000 (expected the 1-based official labels)")
        if remap is not None:
            mask = remap[lab] >= 0
            data, lab = data[mask], remap[lab[mask]]
        images.append(decode_rows(data))
        labels.append(lab)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    y = torch.from_numpy(np.concatenate(labels))
    return TensorImageDataset(
        x, y, transform=transform, num_classes=1000 if keep is None else len(keep),
        name=f"imagenet32/{'train' if train else 'val'}",
    )


__all__ = ["decode_rows", "load_imagenet32"]
