"""Shafahi et al. (2019), "Adversarially robust transfer learning": the feature-distillation
baseline of the Robust-KD paper. Squared L2 distance between the global-average-pooled last
feature maps of student and teacher, summed over channels, mean over the batch."""

from __future__ import annotations

import torch


def gap_l2_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``mean_n || GAP(f_s[n]) - GAP(f_t[n]) ||_2^2`` for maps ``(N, C, H, W)`` (or pooled ``(N, C)``)."""
    if f_s.shape != f_t.shape:
        raise ValueError(f"feature maps differ in shape: student {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}")
    g_s = f_s.flatten(2).mean(dim=2) if f_s.dim() > 2 else f_s
    g_t = f_t.detach().flatten(2).mean(dim=2) if f_t.dim() > 2 else f_t.detach()
    return (g_s - g_t).pow(2).sum(dim=1).mean()
