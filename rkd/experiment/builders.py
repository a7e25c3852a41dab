"""From a config to the objects a run trains on: device, datasets, model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rkd.config import ExperimentConfig
from rkd.data import build_dataset, class_subset, dataset_info, half_split, limit, validation_split
from rkd.data.shifts import shift_dataset
from rkd.data.transforms import train_transform
from rkd.models import create_model, set_input_size
from rkd.models.memory_format import ChannelsLast


@dataclass(frozen=True)
class DataSplits:
    """The data of a run: ``train`` (augmented as configured; without the validation images),
    ``validation`` (held out of the training set by ``data.val_size``, never augmented; None
    without one), ``test`` and the number of classes."""

    train: Any
    validation: Any
    test: Any
    num_classes: int


def build_data(data_cfg) -> DataSplits:
    """The configured data: ``data.shift`` of every image (train and test alike), classes, then
    the half, ``limit_train``, and the validation split (``data.val_size`` of what is left,
    stratified, seeded by ``data.split_seed``) of the training set; ``limit_test`` of the test
    set; augmentation of the training images only."""
    kw = dict(root=data_cfg.root, download=data_cfg.download)
    if data_cfg.dataset in ("cifar10", "cifar100", "svhn"):
        kw["verify"] = data_cfg.verify
    if data_cfg.image_size is not None:
        kw["image_size"] = data_cfg.image_size
    train = build_dataset(data_cfg.dataset, train=True, **kw)
    test = build_dataset(data_cfg.dataset, train=False, **kw)
    train, test = shift_dataset(train, data_cfg.shift), shift_dataset(test, data_cfg.shift)
    if data_cfg.classes is not None:
        train, test = class_subset(train, data_cfg.classes), class_subset(test, data_cfg.classes)
    if data_cfg.half is not None:
        train = half_split(train, data_cfg.half, seed=data_cfg.split_seed)
    if data_cfg.limit_train is not None:
        train = limit(train, data_cfg.limit_train, seed=data_cfg.split_seed)
    try:
        train, val = validation_split(train, data_cfg.val_size, seed=data_cfg.split_seed)
    except ValueError as exc:
        raise ValueError(f"data.{exc}") from None
    if data_cfg.limit_test is not None:
        test = limit(test, data_cfg.limit_test, seed=data_cfg.split_seed)
    if data_cfg.augment:
        train = train.with_transform(train_transform(flip=data_cfg.flip))
    return DataSplits(train, val, test, train.num_classes)


def build_datasets(data_cfg):
    """(train set with augmentation, test set, num_classes) as configured; the training set
    excludes the validation images of ``data.val_size`` (:func:`build_data` also returns them)."""
    d = build_data(data_cfg)
    return d.train, d.test, d.num_classes


def num_classes_of(data_cfg) -> int:
    """Number of classes the configured data will have (known before loading it)."""
    return len(data_cfg.classes) if data_cfg.classes is not None else dataset_info(data_cfg.dataset).num_classes


def build_model(cfg: ExperimentConfig, num_classes: int | None = None):
    """The configured model (its knobs were checked against the architecture by load_config)."""
    num_classes = num_classes_of(cfg.data) if num_classes is None else num_classes
    kwargs = cfg.model.kwargs()
    if cfg.model.arch.startswith("mae_") and "img_size" not in kwargs and cfg.data.image_size is not None:
        kwargs["img_size"] = cfg.model.input_size or cfg.data.image_size  # the side the ViT is given
    model = create_model(cfg.model.arch, num_classes=num_classes, mean=cfg.data.dataset, **kwargs)
    if cfg.model.channels_last is None and isinstance(model, ChannelsLast):
        model.set_channels_last(cfg.method.prefers_channels_last())  # unset: the method's layout
    return set_input_size(model, cfg.model.input_size) if cfg.model.input_size is not None else model
