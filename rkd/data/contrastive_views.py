"""SimCLR-style random views of a batch, as tensor ops on the device (RoCL's augmentations).

RoCL (Kim et al. 2020, ``data_loader.py``) draws each view of a CIFAR image with
``RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8)``, ``RandomGrayscale(0.2)``, a horizontal
flip and ``RandomResizedCrop(32)`` (scale 0.08-1). Here every image of the batch gets its own
parameters in one batched pass:

* crop: a box of area ``scale`` (log-uniform aspect 3/4-4/3) resized back with
  :func:`torchvision.ops.roi_align` (bilinear, one sample per output pixel: a box no larger
  than the image is only ever enlarged), one box per image;
* flip with probability 1/2 (when ``flip``);
* colour jitter with probability ``p_jitter``: brightness, contrast and saturation factors in
  ``[1 - s, 1 + s]`` (blends with black, the image's mean grey, its greyscale), and a hue shift
  in ``[-h, h]`` of a turn, applied as a rotation of the chroma plane in YIQ space (torchvision
  shifts HSV hue; the rotation is the batched, differentiable equivalent up to gamut clipping).
  The four are applied in a fixed order (torchvision shuffles it);
* greyscale with probability ``p_gray``.

Inputs and outputs are ``(N, C, H, W)`` in [0, 1]; single-channel images skip the colour ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

#: ITU-R 601 luma weights (torchvision's rgb_to_grayscale)
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass(frozen=True)
class ViewParams:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_gray: float = 0.2


def _uniform(n: int, low: float, high: float, like: torch.Tensor, gen) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=gen, dtype=like.dtype)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], gen=None,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Each image cropped to a random box (area fraction in ``scale``, aspect in ``ratio``,
    each side clipped to the image's) and resized back to its size."""
    n, _, h, w = x.shape
    area = _uniform(n, *scale, x, gen)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), x, gen))
    bw = (torch.sqrt(area * aspect) * w).clamp(1, w)
    bh = (torch.sqrt(area / aspect) * h).clamp(1, h)
    x0 = _uniform(n, 0, 1, x, gen) * (w - bw)
    y0 = _uniform(n, 0, 1, x, gen) * (h - bh)
    idx = torch.arange(n, device=x.device, dtype=x.dtype)
    boxes = torch.stack([idx, x0, y0, x0 + bw, y0 + bh], dim=1)
    return roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(_RGB_TO_YIQ, device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,njhw->nihw", m, x)
    c, s = torch.cos(2 * math.pi * turns).view(-1, 1, 1), torch.sin(2 * math.pi * turns).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq).clamp(0, 1)


def color_jitter(x: torch.Tensor, p: ViewParams, gen=None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter (each image its own factors)."""
    n = x.shape[0]
    x = _blend(x, torch.zeros_like(x), _uniform(n, 1 - p.brightness, 1 + p.brightness, x, gen))
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    x = _blend(x, mean, _uniform(n, 1 - p.contrast, 1 + p.contrast, x, gen))
    x = _blend(x, _gray(x).expand_as(x), _uniform(n, 1 - p.saturation, 1 + p.saturation, x, gen))
    return _hue_rotate(x, _uniform(n, -p.hue, p.hue, x, gen)) if p.hue > 0 else x


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def random_view(x: torch.Tensor, p: ViewParams = ViewParams(), gen: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each image of ``x`` (see the module docstring)."""
    n = x.shape[0]
    out = random_resized_crop(x, p.crop_scale, gen)
    if p.flip:
        out = _where(torch.rand(n, device=x.device, generator=gen) < 0.5, out.flip(-1), out)
    if x.shape[1] == 3:
        if p.p_jitter > 0:
            jitter = torch.rand(n, device=x.device, generator=gen) < p.p_jitter
            out = _where(jitter, color_jitter(out, p, gen), out)
        if p.p_gray > 0:
            gray = torch.rand(n, device=x.device, generator=gen) < p.p_gray
            out = _where(gray, _gray(out).expand_as(out), out)
    return out.clamp(0, 1)
