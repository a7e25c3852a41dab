"""Random patch masking of images (MACD's student input): split each image into a grid of
``patch x patch`` squares and set a random subset of them to zero, exactly ``round(ratio * L)``
of the ``L`` squares per sample, drawn independently for each sample. The image keeps its
shape (the whole masked image enters the CNN student, unlike the MAE encoder, which only sees
the visible patches). ``fill`` is what a hidden square holds: 0 (black in ``[0, 1]`` pixel space)
or, e.g., the per-channel normalisation mean, which is zero in the normalised input."""

from __future__ import annotations

import torch


def random_patch_mask(x: torch.Tensor, patch: int, ratio: float, generator: torch.Generator | None = None,
                      fill: float | torch.Tensor = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked images, mask)`` for images ``(N, C, H, W)``; ``mask`` is ``(N, H/patch, W/patch)``
    with 1 where the square was hidden. ``fill``: a number or a tensor broadcastable to
    ``(1, C, 1, 1)`` (per-channel values)."""
    n, _, h, w = x.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch {patch} must divide the image size {h}x{w}")
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    gh, gw = h // patch, w // patch
    num = gh * gw
    k = round(ratio * num)
    device = generator.device if generator is not None else x.device  # drawn where x is: no copy per step
    noise = torch.rand(n, num, generator=generator, device=device)
    ranks = noise.argsort(dim=1).argsort(dim=1).to(x.device)
    mask = (ranks < k).view(n, gh, gw)  # the k smallest noises of each sample are masked
    keep = (~mask).to(x.dtype).repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    keep = keep.unsqueeze(1)  # (N, 1, H, W)
    masked = x * keep
    if torch.is_tensor(fill) or fill != 0:
        masked = masked + (1 - keep) * torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return masked, mask.to(x.dtype)
