"""Feature-map distances between a student's and a teacher's stage outputs (Robust-KD L_fm).

Each sample's map ``(C, H, W)`` is flattened (no pooling: the spatial layout is kept) and
compared with the teacher's map of the same sample; the loss of a stage is the mean over the
batch, and the losses of the constrained stages are **summed** (eq. 21 of the paper)::

    cosine:  1 - cos(f_s, f_t)              in [0, 2]; invariant to a positive rescaling of f_s
    l2:      ||f_s - f_t||_2                 Euclidean distance of the flattened maps
    mse:     ||f_s - f_t||_2^2 / (C*H*W)     mean squared difference per element

The paper's default is cosine; its Table 6 ablates "L2 distance" (magnitude and reduction are
not stated: ``l2`` and ``mse`` differ by a square and a per-element normalisation, so their
useful weights differ by orders of magnitude).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

FEATURE_DISTANCES = ("cosine", "l2", "mse")


def feature_distance(f_s: torch.Tensor, f_t: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Per-sample distance ``(N,)`` between two batches of feature maps of the same shape."""
    if f_s.shape != f_t.shape:
        raise ValueError(f"feature maps differ in shape: student {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}")
    a, b = f_s.flatten(1), f_t.flatten(1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
    if kind == "l2":
        # sqrt has an infinite gradient at 0: add a tiny floor inside
        return ((a - b).pow(2).sum(dim=1) + 1e-12).sqrt()
    if kind == "mse":
        return (a - b).pow(2).mean(dim=1)
    raise ValueError(f"unknown feature distance {kind!r}; choose from {FEATURE_DISTANCES}")


def feature_map_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                     kind: str = "cosine") -> torch.Tensor:
    """``sum_i mean_n distance(student[i][n], teacher[i][n])`` over the given stages.

    The teacher's maps are detached here (a teacher is a fixed target)."""
    if len(student) != len(teacher) or not student:
        raise ValueError("need the same, non-zero number of student and teacher maps "
                         f"({len(student)} vs {len(teacher)})")
    return sum(feature_distance(s, t.detach(), kind).mean() for s, t in zip(student, teacher))
