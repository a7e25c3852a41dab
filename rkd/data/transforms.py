"""Tensor augmentations for ``[0, 1]`` images, drawing from torch's global RNG.

All transforms accept one image ``(C, H, W)`` or a batch ``(N, C, H, W)``; in batch mode each
sample gets its own random crop offset / flip decision. Randomness comes only from torch's
global generator (``torch.randint`` / ``torch.rand``), so restoring it with
``torch.set_rng_state`` reproduces the same augmentations. (In ``DataLoader`` worker
processes torch seeds each worker's generator itself: ``base_seed + worker_id``.)

The standard CIFAR recipe is :func:`train_transform`: random crop 32 with 4 pixels of padding
then a horizontal flip with probability 0.5. Padding is **zero** padding by default (as
``torchvision.transforms.RandomCrop(32, padding=4)`` in most CIFAR/robustness code);
``padding_mode="reflect"`` or ``"replicate"`` are available. Digits and SVHN must not be
flipped: pass ``flip=False``.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F

_PAD_MODES = {"zeros": "constant", "constant": "constant", "reflect": "reflect", "replicate": "replicate"}


def _as_batch(x: torch.Tensor):
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")


class RandomCropPad:
    """Pad by ``padding`` pixels on every side, then crop back to the original size at a
    uniformly random offset (per sample).

    Args:
        padding: pixels added on each side.
        padding_mode: ``"zeros"`` (default, alias ``"constant"``), ``"reflect"`` or ``"replicate"``.
    """

    def __init__(self, padding: int = 4, padding_mode: str = "zeros"):
        if padding < 0:
            raise ValueError("padding must be >= 0")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
        self.padding = int(padding)
        self.padding_mode = padding_mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return x
        xb, single = _as_batch(x)
        n, c, h, w = xb.shape
        p = self.padding
        padded = F.pad(xb, (p, p, p, p), mode=_PAD_MODES[self.padding_mode])
        oy = torch.randint(0, 2 * p + 1, (n,))
        ox = torch.randint(0, 2 * p + 1, (n,))
        rows = (oy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (N, H)
        cols = (ox[:, None] + torch.arange(w)[None, :]).to(x.device)  # (N, W)
        bi = torch.arange(n, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"RandomCropPad(padding={self.padding}, padding_mode={self.padding_mode!r})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (per sample)."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xb, single = _as_batch(x)
        flip = torch.rand(xb.shape[0]) < self.p
        if not bool(flip.any()):
            return x
        flip = flip.to(x.device)
        out = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.transforms: List[Callable[[torch.Tensor], torch.Tensor]] = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def train_transform(flip: bool = True, padding: int = 4, padding_mode: str = "zeros") -> Compose:
    """The standard training augmentation: random crop with ``padding`` then (optional) flip.

    ``flip=False`` for digits / SVHN. ``padding=0`` disables cropping.
    """
    ts: List[Callable[[torch.Tensor], torch.Tensor]] = []
    if padding > 0:
        ts.append(RandomCropPad(padding, padding_mode))
    if flip:
        ts.append(RandomHorizontalFlip(0.5))
    return Compose(ts)


__all__ = ["Compose", "RandomCropPad", "RandomHorizontalFlip", "train_transform"]
