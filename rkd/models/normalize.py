"""Input normalisation as a layer inside every model.

Every model in :mod:`rkd.models` takes images in ``[0, 1]`` pixel space and normalises them
itself (the MadryLab ``InputNormalize`` pattern). Attacks therefore work in pixel units: an
``eps`` of ``8/255`` is 8/255 of the ``[0, 1]`` range, whatever the dataset statistics are.

Per-channel statistics (RGB, ``[0, 1]`` scale):

==========  ==============================  ==============================
name        mean                            std
==========  ==============================  ==============================
cifar10     (0.4914, 0.4822, 0.4465)        (0.2470, 0.2435, 0.2616)
cifar100    (0.5071, 0.4865, 0.4409)        (0.2673, 0.2564, 0.2762)
svhn        (0.4377, 0.4438, 0.4728)        (0.1980, 0.2010, 0.1970)
imagenet    (0.485, 0.456, 0.406)           (0.229, 0.224, 0.225)
imagenet32  same as ``imagenet`` (the downsampled set keeps the same statistics up to ~0.03)
digits      (0.3053,) * 3                   (0.3236,) * 3
synthetic   (0.5,) * 3                      (0.5,) * 3
identity    (0.0,) * 3                      (1.0,) * 3
==========  ==============================  ==============================

The CIFAR std values are the true per-pixel standard deviations of the training sets (some
code uses 0.2023/0.1994/0.2010, which are the std of per-image means). The ``digits`` values
were computed here from scikit-learn's bundled 8x8 digits after the loader's processing
(``/16``, bilinear upsampling to 32x32, ``align_corners=False``): mean 0.30526, std 0.32363
over all 1797 images; the three channels are identical copies.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]

NORMALIZATION_STATS: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet32": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3053, 0.3053, 0.3053), (0.3236, 0.3236, 0.3236)),
    "synthetic": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "identity": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

StatsArg = Union[str, Sequence[float], None]


def get_normalization(name: str) -> Stats:
    """Return ``(mean, std)`` for a statistics name such as ``"cifar10"``.

    Raises ``ValueError`` listing the known names for an unknown one.
    """
    key = name.lower()
    if key not in NORMALIZATION_STATS:
        raise ValueError(
            f"unknown normalisation stats {name!r}; known: {sorted(NORMALIZATION_STATS)}"
        )
    return NORMALIZATION_STATS[key]


def resolve_stats(mean: StatsArg, std: StatsArg, default: str) -> Stats:
    """Turn the ``mean``/``std`` knobs of a model constructor into two float tuples.

    - ``mean`` may be a statistics name (``"cifar10"``); then ``std`` must be ``None`` or the
      same name, and both come from :data:`NORMALIZATION_STATS`.
    - ``mean`` and ``std`` may both be sequences of per-channel floats.
    - both ``None``: the statistics named by ``default``.
    """
    if isinstance(mean, str):
        if std is not None and std != mean:
            raise ValueError("when mean is a stats name, std must be None or the same name")
        return get_normalization(mean)
    if isinstance(std, str):
        raise ValueError("std given as a stats name but mean is not; pass mean=<name> instead")
    if mean is None and std is None:
        return get_normalization(default)
    if mean is None or std is None:
        raise ValueError("give both mean and std (or neither, or a stats name as mean)")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``[0, 1]`` inputs of shape ``(N, C, H, W)``.

    ``mean`` and ``std`` are (persistent) buffers of shape ``(1, C, 1, 1)``, so they move with
    ``.to(device)`` and are saved in the state dict: a checkpoint carries its own statistics.
    A single value is broadcast over all channels.

    ``size`` (optional, set with :func:`set_input_size`): inputs are first resized (bilinear) to
    ``size x size``. This is how a model trained "at 224" (the MACD paper's ResNet-50/ViT on
    CIFAR) takes 32x32 images: attacks and perturbation budgets stay in the dataset's own pixel
    space and no 224-pixel copy of the dataset is ever stored.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: Optional[int] = None):
        super().__init__()
        self.size = size
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(v <= 0 for v in std):  # checked on Python floats: works on the meta device too
            raise ValueError(f"std must be positive, got {std}")
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @classmethod
    def from_name(cls, name: str) -> "InputNormalize":
        """Build from a statistics name, e.g. ``InputNormalize.from_name("cifar10")``."""
        mean, std = get_normalization(name)
        return cls(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        fmt = lambda t: "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"  # noqa: E731
        size = f", size={self.size}" if self.size is not None else ""
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}{size}"


def set_input_size(model: nn.Module, size: Optional[int]) -> nn.Module:
    """Make every :class:`InputNormalize` of ``model`` resize its input to ``size x size``
    (``None``: no resizing). Returns the model; raises if it has no input normalisation."""
    found = [m for m in model.modules() if isinstance(m, InputNormalize)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no InputNormalize layer to resize inputs in")
    for m in found:
        m.size = None if size is None else int(size)
    return model


def build_normalize(mean: StatsArg, std: StatsArg, default: str) -> InputNormalize:
    """``InputNormalize`` from constructor knobs (see :func:`resolve_stats`)."""
    m, s = resolve_stats(mean, std, default)
    return InputNormalize(m, s)


__all__ = [
    "InputNormalize",
    "NORMALIZATION_STATS",
    "build_normalize",
    "get_normalization",
    "resolve_stats",
    "set_input_size",
]
