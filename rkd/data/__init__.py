"""Datasets in ``[0, 1]`` pixel space, all as in-memory :class:`TensorImageDataset`.

Items are ``(float32 image (C, H, W) in [0, 1], int label)``. Build by name::

    from rkd.data import build_dataset, dataset_info, half_split, train_transform
    train = build_dataset("cifar10", root="data", train=True)
    train_minus = half_split(train, "-")           # Robust-KD's CIFAR10- half
    train = train.with_transform(train_transform(flip=dataset_info("cifar10").hflip))

Names: ``digits`` (sklearn, offline), ``synthetic`` (seeded, offline), ``cifar10``,
``cifar100``, ``svhn`` (torchvision; ``download`` flag), ``imagenet32`` (official npz files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .arrays import TensorImageDataset, to_float_images
from .digits import load_digits_dataset
from .errors import DatasetIntegrityError, DatasetNotFoundError
from .imagenet32 import load_imagenet32
from .paired import paired_dataset
from .splits import (
    class_subset,
    half_split,
    half_split_indices,
    limit,
    validation_count,
    validation_split,
    validation_split_indices,
)
from .synthetic import make_synthetic
from .torchvision_sets import load_cifar10, load_cifar100, load_svhn
from .transforms import Compose, RandomCropPad, RandomHorizontalFlip, train_transform


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a named dataset.

    Attributes:
        name: registry name.
        num_classes: number of classes (synthetic: the default, 10; configurable).
        image_shape: ``(C, H, W)`` of the items.
        norm: name of the normalisation statistics in :mod:`rkd.models.normalize`.
        hflip: whether horizontal-flip augmentation is appropriate (False for digits/SVHN).
        needs_root: whether ``build_dataset`` needs a ``root`` directory.
    """

    name: str
    num_classes: int
    image_shape: Tuple[int, int, int]
    norm: str
    hflip: bool
    needs_root: bool


_INFO: Dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, (3, 32, 32), "digits", False, False),
    "synthetic": DatasetInfo("synthetic", 10, (3, 32, 32), "synthetic", True, False),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), "cifar10", True, True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), "cifar100", True, True),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), "svhn", False, True),
    "imagenet32": DatasetInfo("imagenet32", 1000, (3, 32, 32), "imagenet32", True, True),
}


def _digits(root, train, download, **kw):
    return load_digits_dataset(train, **kw)


def _synthetic(root, train, download, **kw):
    return make_synthetic(train, **kw)


def _cifar10(root, train, download, **kw):
    return load_cifar10(root, train, download=download, **kw)


def _cifar100(root, train, download, **kw):
    return load_cifar100(root, train, download=download, **kw)


def _svhn(root, train, download, **kw):
    return load_svhn(root, train, download=download, **kw)


def _imagenet32(root, train, download, **kw):
    return load_imagenet32(root, train, download=download, **kw)


_BUILDERS: Dict[str, Callable[..., TensorImageDataset]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "svhn": _svhn,
    "imagenet32": _imagenet32,
}


def require_dataset(name: str, *, root: Optional[Union[str, Path]], train: bool = True,
                    download: bool = False) -> None:
    """Raise :class:`DatasetNotFoundError` (naming the missing files) if the split's files are not
    on disk and will not be downloaded; reads no images, so a chain can check every stage's data
    before its first stage trains. Bundled and generated sets always pass."""
    key = _key(name)
    if key in ("digits", "synthetic") or (download and key != "imagenet32"):
        return
    if key == "imagenet32":
        from rkd.data.imagenet32 import require_imagenet32

        require_imagenet32(Path(root).expanduser(), train)
        return
    from rkd.data.torchvision_sets import require_torchvision_files

    require_torchvision_files(key, root, train)


def list_datasets() -> list:
    """Sorted registry names."""
    return sorted(_BUILDERS)


def _key(name: str) -> str:
    key = str(name).lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Static :class:`DatasetInfo` (classes, image shape, normalisation name, flip policy)."""
    return _INFO[_key(name)]


def build_dataset(
    name: str,
    *,
    root: Optional[Union[str, Path]] = None,
    train: bool = True,
    download: bool = False,
    **kwargs: Any,
) -> TensorImageDataset:
    """Build a named dataset split as a :class:`TensorImageDataset`.

    Args:
        name: one of :func:`list_datasets`.
        root: data directory (required for cifar10, cifar100, svhn, imagenet32; ignored by
            digits and synthetic).
        train: training split (True) or test/validation split (False).
        download: let torchvision download missing CIFAR/SVHN files (needs internet).
        **kwargs: passed to the loader: ``transform`` for all; ``verify`` (cifar*, svhn);
            ``split`` (svhn); ``max_classes``/``classes``/``train_batches`` (imagenet32);
            ``test_fraction``/``seed``/``image_size`` (digits); ``n_train``/``n_test``/
            ``num_classes``/``image_size``/``noise``/``seed`` (synthetic).

    Raises:
        ValueError: unknown name, or missing ``root`` for a file-backed dataset.
        DatasetNotFoundError: files missing and not downloaded.
        DatasetIntegrityError: files present but failing the md5 check (``verify=True``).
    """
    key = _key(name)
    if _INFO[key].needs_root and root is None:
        raise ValueError(f"dataset {key!r} needs root=<data directory>")
    return _BUILDERS[key](root, train, download, **kwargs)


__all__ = [
    "Compose",
    "DatasetInfo",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "RandomCropPad",
    "RandomHorizontalFlip",
    "TensorImageDataset",
    "build_dataset",
    "class_subset",
    "dataset_info",
    "half_split",
    "half_split_indices",
    "limit",
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_digits_dataset",
    "load_imagenet32",
    "load_svhn",
    "require_dataset",
    "make_synthetic",
    "paired_dataset",
    "to_float_images",
    "train_transform",
    "validation_count",
    "validation_split",
    "validation_split_indices",
]
