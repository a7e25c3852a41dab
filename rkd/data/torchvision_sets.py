"""CIFAR-10, CIFAR-100 and SVHN through ``torchvision.datasets``, as tensor-backed datasets.

Expected files (torchvision's layouts; ``download=True`` fetches them there):

- CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- CIFAR-100: ``<root>/cifar-100-python/{train, test, meta}``
- SVHN: ``<root>/train_32x32.mat``, ``<root>/test_32x32.mat`` (``extra_32x32.mat`` for the
  extra split) directly in ``root``.

Missing files with ``download=False`` raise :class:`DatasetNotFoundError` naming the exact
path expected.

Integrity (a design choice): torchvision verifies every file against the md5 of the official
release, inside its private ``_check_integrity`` (and, for CIFAR, ``_load_meta``). With
``verify=True`` (default) that check runs unchanged, and a mismatch raises
:class:`DatasetIntegrityError`. With ``verify=False`` — user-provided or re-packed files,
and the tests, which write small files in the real formats — thin subclasses replace *only*
that check by "the files exist"; all parsing is still torchvision's own code.

Conversion: CIFAR ``.data`` is ``(N, 32, 32, 3)`` HWC uint8 -> ``(N, 3, 32, 32)``; SVHN
``.data`` is already ``(N, 3, 32, 32)`` and torchvision maps label 10 to digit 0.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
import torchvision

from .arrays import TensorImageDataset, Transform
from .errors import DatasetIntegrityError, DatasetNotFoundError

PathLike = Union[str, Path]


class _CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision CIFAR-10 whose md5 check can be switched off (``verify=False``)."""

    def __init__(self, root: PathLike, train: bool = True, download: bool = False, verify: bool = True):
        self._verify = bool(verify)
        super().__init__(str(root), train=train, download=download)

    def _check_integrity(self) -> bool:
        if self._verify:
            return super()._check_integrity()
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, f))
            for f, _ in self.train_list + self.test_list
        )

    def _load_meta(self) -> None:
        if self._verify:
            return super()._load_meta()
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"Dataset metadata file not found: {path}")
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR100(_CIFAR10, torchvision.datasets.CIFAR100):
    """torchvision CIFAR-100 with ``verify``; the MRO (_CIFAR10, CIFAR100, CIFAR10) takes the
    file lists, md5s and meta key from ``CIFAR100`` and the overrides from ``_CIFAR10``."""


class _SVHN(torchvision.datasets.SVHN):
    """torchvision SVHN whose md5 check can be switched off (``verify=False``)."""

    def __init__(self, root: PathLike, split: str = "train", download: bool = False, verify: bool = True):
        self._verify = bool(verify)
        super().__init__(str(root), split=split, download=download)

    def _check_integrity(self) -> bool:
        if self._verify:
            return super()._check_integrity()
        return os.path.isfile(os.path.join(self.root, self.filename))


def _cifar_files(cls) -> List[str]:
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _missing(directory: Path, files: List[str]) -> List[str]:
    return [f for f in files if not (directory / f).is_file()]


def _load_cifar(
    name: str,
    cls,
    root: PathLike,
    train: bool,
    download: bool,
    verify: bool,
    transform: Optional[Transform],
) -> TensorImageDataset:
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    files = _cifar_files(cls)
    missing = _missing(folder, files)
    if missing and not download:
        raise DatasetNotFoundError(name, folder, missing)
    try:
        ds = cls(root, train=train, download=download, verify=verify)
    except RuntimeError as e:
        if "corrupted" in str(e) and not _missing(folder, files):
            raise DatasetIntegrityError(name, folder) from e
        raise
    except OSError as e:  # download failure (no network, ...)
        raise DatasetNotFoundError(
            name, folder, _missing(folder, files),
            hint=f"Download failed ({e}); place the files there manually.",
        ) from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # (N, 3, 32, 32)
    num_classes = 100 if issubclass(cls, torchvision.datasets.CIFAR100) else 10
    return TensorImageDataset(
        images, torch.as_tensor(ds.targets, dtype=torch.int64), transform=transform,
        num_classes=num_classes, classes=list(ds.classes), name=f"{name}/{'train' if train else 'test'}",
    )


def load_cifar10(
    root: PathLike,
    train: bool = True,
    *,
    download: bool = False,
    verify: bool = True,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """CIFAR-10 train (50000) or test (10000) split, uint8 ``(3, 32, 32)``, 10 classes.

    Files: ``<root>/cifar-10-batches-py/``. ``verify=False`` skips torchvision's md5 check.
    """
    return _load_cifar("cifar10", _CIFAR10, root, train, download, verify, transform)


def load_cifar100(
    root: PathLike,
    train: bool = True,
    *,
    download: bool = False,
    verify: bool = True,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """CIFAR-100 train (50000) or test (10000) split, fine labels (100 classes).

    Files: ``<root>/cifar-100-python/``. ``verify=False`` skips torchvision's md5 check.
    """
    return _load_cifar("cifar100", _CIFAR100, root, train, download, verify, transform)


def load_svhn(
    root: PathLike,
    train: bool = True,
    *,
    split: Optional[str] = None,
    download: bool = False,
    verify: bool = True,
    transform: Optional[Transform] = None,
) -> TensorImageDataset:
    """SVHN cropped digits: ``train`` (73257), ``test`` (26032) or ``extra`` (531131).

    ``split`` overrides ``train`` (``"train"``/``"test"``/``"extra"``). File:
    ``<root>/<split>_32x32.mat`` (``X`` ``(32, 32, 3, N)`` uint8, ``y`` ``(N, 1)`` with 10 for
    digit 0 — mapped to label 0). ``verify=False`` skips torchvision's md5 check.
    """
    split = split or ("train" if train else "test")
    if split not in _SVHN.split_list:
        raise ValueError(f"SVHN split must be one of {sorted(_SVHN.split_list)}, got {split!r}")
    root = Path(root).expanduser()
    filename = _SVHN.split_list[split][1]
    path = root / filename
    if not path.is_file() and not download:
        raise DatasetNotFoundError("svhn", path)
    try:
        ds = _SVHN(root, split=split, download=download, verify=verify)
    except RuntimeError as e:
        if "corrupted" in str(e) and path.is_file():
            raise DatasetIntegrityError("svhn", path) from e
        raise
    except OSError as e:
        raise DatasetNotFoundError(
            "svhn", path, hint=f"Download failed ({e}); place the file there manually."
        ) from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 3, 32, 32)
    labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
    return TensorImageDataset(
        images, labels, transform=transform, num_classes=10,
        classes=[str(i) for i in range(10)], name=f"svhn/{split}",
    )


def require_torchvision_files(name: str, root: PathLike, train: bool) -> None:
    """DatasetNotFoundError naming what is missing, if ``name``'s files (CIFAR-10/100: every file of
    the archive; SVHN: the split's ``.mat``) are not under ``root``; reads nothing."""
    root = Path(root).expanduser()
    if name == "svhn":
        path = root / _SVHN.split_list["train" if train else "test"][1]
        if not path.is_file():
            raise DatasetNotFoundError("svhn", path)
        return
    cls = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}[name]
    folder = root / cls.base_folder
    missing = _missing(folder, _cifar_files(cls))
    if missing:
        raise DatasetNotFoundError(name, folder, missing)


__all__ = ["load_cifar10", "load_cifar100", "load_svhn", "require_torchvision_files"]
