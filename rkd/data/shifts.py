"""Deterministic input shifts: the same task (same labels) under another image distribution.

A shift is a fixed tensor op applied to every image of a dataset, train and test alike
(``data.shift`` of a config; :func:`rkd.experiment.builders.build_data` applies it right after
loading, before any split, so the halves, the validation split and the test set all see it)::

    from rkd.data.shifts import shift_dataset
    rotated = shift_dataset(build_dataset("digits", train=True), "rot90")

Shifts (:data:`SHIFTS`):

* ``none`` -- the images as loaded;
* ``invert`` -- contrast inversion ``1 - x`` (``255 - x`` for uint8 storage);
* ``rot90``, ``rot180``, ``rot270`` -- rotation of the image plane by that many degrees,
  counter-clockwise as displayed (row 0 at the top; :func:`torch.rot90` from the row axis
  towards the column axis); square images only, so the shape is kept.

Why a shift at all: a robust teacher trained on a shifted source and a student on the unshifted
target is the digits analogue of the Robust-KD paper's cross-dataset transfer (ImageNet32 ->
CIFAR-10): the task is shared, the distribution is not. The choice of shift for that study is
argued in ``rkd/presets/digits_teacher_plus_rot90.yaml``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from .arrays import TensorImageDataset


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x if x.dtype == torch.uint8 else 1.0 - x


def _rotation(quarter_turns: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def rotate(x: torch.Tensor) -> torch.Tensor:
        if quarter_turns % 2 and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"a {90 * quarter_turns}-degree rotation needs square images, got {tuple(x.shape)}")
        return torch.rot90(x, quarter_turns, dims=(-2, -1)).contiguous()
    return rotate


_OPS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "invert": _invert,
    "rot90": _rotation(1),
    "rot180": _rotation(2),
    "rot270": _rotation(3),
}

#: the valid values of ``data.shift`` (the schema's ``rkd.config.schema.SHIFTS`` lists the same)
SHIFTS = tuple(_OPS)


def shift_images(images: torch.Tensor, shift: str) -> torch.Tensor:
    """``images`` (``(..., H, W)``, uint8 0..255 or floating in [0, 1]) under ``shift``; same
    dtype and shape. ``none`` returns the tensor itself; the others a new tensor."""
    if shift not in _OPS:
        raise ValueError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
    return _OPS[shift](images)


def shift_dataset(dataset: TensorImageDataset, shift: str) -> TensorImageDataset:
    """``dataset`` with its stored images shifted (labels, transform and classes kept);
    ``none`` returns ``dataset`` itself."""
    if shift == "none":
        return dataset
    return TensorImageDataset(shift_images(dataset.images, shift), dataset.labels, transform=dataset.transform,
                              num_classes=dataset.num_classes, classes=dataset.classes,
                              name=f"{dataset.name}+{shift}")


__all__ = ["SHIFTS", "shift_dataset", "shift_images"]
