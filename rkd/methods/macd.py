"""MACD stage 3 (Zhang & Dong 2024, Algorithm 2, eq. 5-6): contrastive distillation from a
frozen MAE teacher into a CNN student, on adversarial examples made once.

Batches are *paired*: ``x`` is ``(N, 2C, H, W)``, the clean images in the first ``C`` channels
and their one-time adversarial examples in the last ``C`` (stacked before augmentation, so one
random crop moves both; :func:`rkd.data.paired_dataset`). With ``adversarial=False`` (the
Table 7 ablation) ``x`` is the clean ``(N, C, H, W)`` batch and the teacher sees it too.

One step::

    S      = pool(backbone(mask2(clean)))          student input: patch2 squares hidden at ratio2
                                                   (at the model's input size when it resizes)
    T      = teacher(adv, mask_ratio=ratio1)       MAE encoder on the visible patches + feature module
    L      = CE(head(S), y) + weight * [KL(T || P(S)) + || P(S)/|P(S)| - T/|T| ||^2]

The student side ``P`` (``projection: learned``, the default) is a linear layer from the
student's width ``D_S`` to the teacher's ``D_T``, trained with the student, present also when
the widths agree. It is needed for the target to be reachable at all: ``S`` is pooled post-ReLU
CNN features (every coordinate >= 0) while ``T`` is a LayerNormed ViT token with about half its
coordinates negative, so no ``S`` itself can point along ``T`` (the normalised-L2 term stays
near 0.6 at best; ``tests/test_methods.py`` measures it). ``projection: fixed`` is the earlier
choice, kept for comparison: ``T`` through a fixed random Gaussian map to ``D_S`` (the
identity at equal widths), the student unprojected, with that floor. Either way the target
side is never trained, so the loss cannot be lowered by collapsing the target.
``distill="self"`` (Table 9, "contrastive learning only") replaces the teacher by the student's
own detached features of the adversarial image (batch statistics as in training; the
batch-norm running statistics are left as they were).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from rkd.config.identity import LOADER, RUN, NotInKey, identity
from rkd.config.numbers import Number
from rkd.config.schema import OneTimeAttackConfig, TeacherConfig
from rkd.data.masking import random_patch_mask
from rkd.losses import macd_robust_loss
from rkd.losses.contrastive import KL_DIRECTIONS, KlDirection
from rkd.methods.base import Method, StepOutput, freeze
from rkd.methods.registry import MethodSpec, SharedTrainingData, register_method, require
from rkd.methods.teacher import DistillationConfig
from rkd.models.modes import batchnorm_statistics_kept

MASK_VALUES = ("zero", "mean")


class MacdMethod(DistillationConfig):
    """MACD stage 3 (Zhang & Dong 2024, Algorithm 2): contrastive distillation from a frozen MAE
    teacher into a CNN student.

    Each step: the teacher sees the one-time adversarial example of each image (made once by
    PGD against ``source``), MAE-masked at ``teacher_mask_ratio`` with the teacher's own patch
    size (visible patches only); the student sees the clean image with ``student_mask_ratio``
    of its ``student_patch`` squares zeroed. ``L = CE(head(S), y) + weight * (KL + normalised
    L2)(S, P(T))`` with ``S`` the student's pooled backbone features and ``P`` a projection of
    the teacher's features to the student's width.

    Ablations (the paper's Tables 7-9): ``adversarial: false`` (the teacher sees the clean
    image), ``masking: false`` (no masking on either side), ``distill: self`` (contrastive
    learning only: the target is the student's own features of the adversarial image, no MAE).
    """

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("teacher", "source")
    name: Literal["macd"]
    teacher: Optional[TeacherConfig] = Field(None, description="the MAE teacher (a method 'mae' stage 'feature' run)")
    source: TeacherConfig = Field(description="the standard model attacked once (and the transfer protocol's source)")
    init: Literal["source", "scratch"] = Field(
        "source", description="student starts from the source model's weights (the paper's 10 distillation "
        "epochs assume a trained network) or from scratch")
    attack: OneTimeAttackConfig = Field(default_factory=OneTimeAttackConfig)
    cache_dir: Annotated[Optional[str], NotInKey(RUN)] = Field(
        None, description="the on-disk adversarial cache; default <output_dir>/adv_cache")
    teacher_mask_ratio: Annotated[Number, Field(ge=0, lt=1)] = Field(
        0.75, description="ratio1 (patch1 = the MAE's patch size)")
    student_patch: Annotated[int, Field(ge=1)] = Field(
        8, description="patch2, in pixels of the student's input (model.input_size when set, else the data's)")
    student_mask_ratio: Annotated[Number, Field(ge=0, lt=1)] = Field(0.7, description="ratio2")
    adversarial: bool = Field(True, description="false: the teacher sees clean images (Table 7)")
    masking: bool = Field(True, description="false: neither side is masked (Table 8)")
    distill: Literal["mae", "self"] = Field("mae", description="self: contrastive only, no MAE teacher (Table 9)")
    projection: Literal["fixed", "learned"] = Field(
        "learned", description="learned = the student's features through a trained linear layer to the teacher's "
        "width (always, also at equal widths: post-ReLU student features cannot point along the teacher's "
        "signed ones); fixed = the teacher's features through a fixed random Gaussian map to the student's width, "
        "student unprojected (the earlier choice; its normalised-L2 term cannot reach 0)")
    kl_direction: KlDirection = Field(
        "teacher_target", description="teacher_target = KL(P_T || P_S) (the distillation convention); "
        "student_target = KL(P_S || P_T); the paper's KL(S_out, T_out) does not say")
    mask_value: Literal[MASK_VALUES] = Field(  # type: ignore[valid-type]
        "zero", description="what the student's hidden squares hold: zero = black in [0, 1] pixel space; "
        "mean = the model's normalisation mean (zero in the normalised input); the paper says 0, not in which space")
    tau: Annotated[Number, Field(gt=0)] = Field(1.0, description="softmax temperature of the KL term")
    weight: Annotated[Number, Field(ge=0)] = Field(1.0, description="weight of L_robust against CE")

    @model_validator(mode="after")
    def _teacher_needed(self):
        if (self.teacher is None) != (self.distill == "self"):
            raise ValueError("method.teacher (an MAE run) is required with distill 'mae' and unused with 'self'")
        if not self.adversarial and self.distill == "self":
            raise ValueError("distill 'self' contrasts the clean and adversarial views: it needs adversarial: true")
        return self

    def transfer_source(self) -> TeacherConfig:
        return self.source

    def check(self, cfg) -> None:
        side = cfg.model.input_size or cfg.data.image_side()
        if side % self.student_patch:
            raise ValueError(f"method.student_patch {self.student_patch} must divide the image side {side} "
                             "(the model's input_size when set: the student is masked at that size)")
        if cfg.eval.transfer is not None and cfg.eval.transfer.source not in (None, self.source):
            raise ValueError("eval.transfer.source differs from method.source; MACD is evaluated against the "
                             "model its adversarial examples came from")

    def check_models(self, cfg, models) -> None:
        teacher = models.get("teacher")
        if teacher is not None and teacher.method.CLASSIFIER:
            raise ValueError(f"method.teacher must be an MAE run (method mae), got method {teacher.method.name}")


class Macd(Method):
    name = "macd"

    def __init__(self, model: nn.Module, teacher: nn.Module | None, *, teacher_mask_ratio: float = 0.75,
                 student_patch: int = 8, student_mask_ratio: float = 0.7, adversarial: bool = True,
                 masking: bool = True, distill: str = "mae", projection: str = "learned", tau: float = 1.0,
                 weight: float = 1.0, seed: int = 0, kl_direction: str = "teacher_target", mask_value: str = "zero"):
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
        if kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}")
        self.projection, self.kl_direction = projection, kl_direction
        if mask_value not in MASK_VALUES:
            raise ValueError(f"mask_value must be one of {MASK_VALUES}, got {mask_value!r}")
        if mask_value == "mean" and not hasattr(getattr(model, "normalize", None), "mean"):
            raise ValueError("mask_value 'mean' needs a model with an InputNormalize layer (model.normalize)")
        self.mask_value = mask_value
        # a student that resizes its input (model.input_size, e.g. 224 for 32 px CIFAR) is masked
        # at that size, as in the paper, where images are resized to 224 before everything else
        self.mask_size = getattr(getattr(model, "normalize", None), "size", None)
        d_s = model.num_features
        d_t = teacher.num_features if teacher is not None else d_s
        self.student_proj: nn.Module = nn.Identity()
        if projection == "learned":
            self.student_proj = nn.Linear(d_s, d_t)
        elif projection == "fixed" and d_t != d_s:
            g = torch.Generator().manual_seed(int(seed))
            self.register_buffer("teacher_proj", torch.randn(d_t, d_s, generator=g) / math.sqrt(d_t))
        elif projection not in ("fixed", "learned"):
            raise ValueError(f"projection must be 'fixed' or 'learned', got {projection!r}")

    def mask_fill(self) -> float | torch.Tensor:
        """What the student's hidden squares hold: 0, or the normalisation mean (1, C, 1, 1)."""
        return self.model.normalize.mean if self.mask_value == "mean" else 0.0

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
                with batchnorm_statistics_kept(self.model):
                    return self.model.forward_head(self.model.forward_features(adv), pre_logits=True)
            t = self.teacher(adv, mask_ratio=self.teacher_mask_ratio if self.masking else 0.0)
            return t @ self.teacher_proj if hasattr(self, "teacher_proj") else t

    def training_step(self, x, y) -> StepOutput:
        clean, adv = self.split(x)
        # the target first: with distill 'self' it is a forward pass of the student itself whose
        # batch-norm buffers are restored in place, which must not happen under a graph that saved them
        t = self.target(adv)
        if self.masking:
            if self.mask_size is not None and clean.shape[-1] != self.mask_size:
                clean = F.interpolate(clean, size=(self.mask_size, self.mask_size), mode="bilinear",
                                      align_corners=False)
            clean, _ = random_patch_mask(clean, self.student_patch, self.student_mask_ratio, fill=self.mask_fill())
        feats = self.model.forward_features(clean)
        s = self.model.forward_head(feats, pre_logits=True)
        logits = self.model.forward_head(feats)
        robust, terms = macd_robust_loss(self.student_proj(s), t.float(), self.tau, self.kl_direction)
        ce = F.cross_entropy(logits, y)
        loss = ce + self.weight * robust if self.weight > 0 else ce
        return StepOutput(loss=loss, terms={"ce": ce, "robust": robust, **terms}, logits=logits.detach())


def _build(cfg: MacdMethod, model, models, seed) -> Macd:
    if cfg.init == "source":
        source = require(models, "source", cfg.name)
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as exc:
            raise ValueError("macd init 'source': the student's architecture differs from the source model's; "
                             f"use the same model or init: scratch ({str(exc)[:300]})") from None
    teacher = freeze(models["teacher"]) if models.get("teacher") is not None else None
    return Macd(model, teacher, teacher_mask_ratio=cfg.teacher_mask_ratio, student_patch=cfg.student_patch,
                student_mask_ratio=cfg.student_mask_ratio, adversarial=cfg.adversarial, masking=cfg.masking,
                distill=cfg.distill, projection=cfg.projection, tau=cfg.tau, weight=cfg.weight, seed=seed,
                kl_direction=cfg.kl_direction, mask_value=cfg.mask_value)


# ------------------------------------------------------------------ the one-time adversarial set
def adversarial_set_identity(cfg) -> str | None:
    """What MACD's one-time set of a run depends on (None: the run uses none): the training
    images (the data section without what only feeds them), the source model, the attack, the
    seed and the attack's batch size."""
    m = cfg.method
    if not m.adversarial:
        return None
    return json.dumps([identity(cfg.data, (RUN, LOADER)), identity(m.source), identity(m.attack), cfg.seed,
                       cfg.data.eval_batch_size], sort_keys=True)


def macd_adversarial_set(cfg, train_set, source, device, return_key: bool = False):
    """MACD's one-time adversarial examples of ``train_set`` (``method.attack`` against
    ``source``), from the on-disk cache under ``method.cache_dir``, built there on first use.
    Returns the ``(N, C, H, W)`` tensor (and the cache key with ``return_key``)."""
    from rkd.adversarial_cache import CacheCorruptError, cached_adversarial_set

    m = cfg.method
    clean = train_set.with_transform(None)
    adv, labels, key = cached_adversarial_set(cfg.adv_cache_dir(m.cache_dir), source, clean, m.attack.attack_params(),
                                              cfg.seed, batch_size=cfg.data.eval_batch_size, device=device,
                                              return_key=True)
    if not torch.equal(labels, clean.labels):
        raise CacheCorruptError(key, "the cached adversarial set's labels differ from the training set's")
    return (adv, key) if return_key else adv


def macd_training_set(cfg, train_set, adversarial_set: torch.Tensor):
    """MACD's training data: each clean image paired with its one-time adversarial example,
    augmented together (:func:`rkd.data.paired_dataset`)."""
    from rkd.data import paired_dataset

    return paired_dataset(train_set.with_transform(None), adversarial_set).with_transform(train_set.transform)


ONE_TIME_SET = SharedTrainingData(
    identity=adversarial_set_identity,
    build=lambda cfg, train_set, models, device: macd_adversarial_set(cfg, train_set, models["source"], device),
    use=macd_training_set,
)

register_method(MethodSpec(config=MacdMethod, build=_build, shared_data=ONE_TIME_SET))
