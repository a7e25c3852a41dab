"""MACD stage 3 (Zhang & Dong 2024, Algorithm 2, eq. 5-6): contrastive distillation from a
frozen MAE teacher into a CNN student, on adversarial examples made once.

Batches are *paired*: ``x`` is ``(N, 2C, H, W)``, the clean images in the first ``C`` channels
and their one-time adversarial examples in the last ``C`` (stacked before augmentation, so one
random crop moves both; :func:`rkd.data.paired_dataset`). With ``adversarial=False`` (the
Table 7 ablation) ``x`` is the clean ``(N, C, H, W)`` batch and the teacher sees it too.

One step::

    S      = pool(backbone(mask2(clean)))          student input: patch2 squares zeroed at ratio2
                                                   (at the model's input size when it resizes)
    T      = teacher(adv, mask_ratio=ratio1)       MAE encoder on the visible patches + feature module
    L      = CE(head(S), y) + weight * [KL(T || S) + || S/|S| - T/|T| ||^2]

Widths: the teacher's ``D_T`` and the student's ``D_S`` are matched by ``projection``:
``fixed`` maps ``T`` to ``D_S`` with a fixed random Gaussian matrix (the identity when the
widths agree; saved with the checkpoint), ``learned`` maps ``S`` to ``D_T`` with a linear layer
trained with the student. Either way the target side is never trained, so the loss cannot be
lowered by collapsing the target. ``distill="self"`` (Table 9, "contrastive learning only")
replaces the teacher by the student's own detached features of the adversarial image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rkd.data.masking import random_patch_mask
from rkd.losses import macd_robust_loss
from rkd.methods.base import Method, StepOutput


class Macd(Method):
    name = "macd"

    def __init__(self, model: nn.Module, teacher: nn.Module | None, *, teacher_mask_ratio: float = 0.75,
                 student_patch: int = 8, student_mask_ratio: float = 0.7, adversarial: bool = True,
                 masking: bool = True, distill: str = "mae", projection: str = "fixed", tau: float = 1.0,
                 weight: float = 1.0, seed: int = 0):
        super().__init__(model)
        if distill not in ("mae", "self"):
            raise ValueError(f"distill must be 'mae' or 'self', got {distill!r}")
        if (teacher is None) != (distill == "self"):
            raise ValueError("distill 'mae' needs the MAE teacher; 'self' uses none")
        if distill == "self" and not adversarial:
            raise ValueError("distill 'self' contrasts clean and adversarial views: it needs adversarial=True")
        self.teacher = teacher
        self.frozen = ("teacher",) if teacher is not None else ()
        self.teacher_mask_ratio, self.student_patch = float(teacher_mask_ratio), int(student_patch)
        self.student_mask_ratio = float(student_mask_ratio)
        self.adversarial, self.masking, self.distill = bool(adversarial), bool(masking), distill
        self.tau, self.weight = float(tau), float(weight)
        self.projection = projection
        # a student that resizes its input (model.input_size, e.g. 224 for 32 px CIFAR) is masked
        # at that size, as in the paper, where images are resized to 224 before everything else
        self.mask_size = getattr(getattr(model, "normalize", None), "size", None)
        d_s = model.num_features
        d_t = teacher.num_features if teacher is not None else d_s
        self.student_proj: nn.Module = nn.Identity()
        if projection == "learned" and d_t != d_s:
            self.student_proj = nn.Linear(d_s, d_t)
        elif projection == "fixed" and d_t != d_s:
            g = torch.Generator().manual_seed(int(seed))
            self.register_buffer("teacher_proj", torch.randn(d_t, d_s, generator=g) / math.sqrt(d_t))
        elif projection not in ("fixed", "learned"):
            raise ValueError(f"projection must be 'fixed' or 'learned', got {projection!r}")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, adversarial) views of a batch (the same tensor twice without adversarial examples)."""
        if not self.adversarial:
            return x, x
        if x.shape[1] % 2:
            raise ValueError(f"MACD expects paired batches (clean | adversarial channels), got {x.shape[1]} channels")
        return x.chunk(2, dim=1)

    def target(self, adv: torch.Tensor) -> torch.Tensor:
        """The teacher's features of the adversarial images in the student's width (no gradient)."""
        with torch.no_grad():
            if self.distill == "self":
                return self.model.forward_head(self.model.forward_features(adv), pre_logits=True)
            t = self.teacher(adv, mask_ratio=self.teacher_mask_ratio if self.masking else 0.0)
            return t @ self.teacher_proj if hasattr(self, "teacher_proj") else t

    def training_step(self, x, y) -> StepOutput:
        clean, adv = self.split(x)
        if self.masking:
            if self.mask_size is not None and clean.shape[-1] != self.mask_size:
                clean = F.interpolate(clean, size=(self.mask_size, self.mask_size), mode="bilinear", align_corners=False)
            clean, _ = random_patch_mask(clean, self.student_patch, self.student_mask_ratio)
        feats = self.model.forward_features(clean)
        s = self.model.forward_head(feats, pre_logits=True)
        logits = self.model.forward_head(feats)
        t = self.target(adv)
        robust, terms = macd_robust_loss(self.student_proj(s), t.float(), self.tau)
        ce = F.cross_entropy(logits, y)
        loss = ce + self.weight * robust if self.weight > 0 else ce
        return StepOutput(loss=loss, terms={"ce": ce, "robust": robust, **terms}, logits=logits.detach())
