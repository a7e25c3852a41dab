"""Robust-KD (Zhang & Yi 2021): transfer robustness from a frozen robust teacher to a student
trained on clean data only.

    L = CE(student(x), y) + beta * L_fm + gamma * L_J            (eq. 21)

``L_fm`` (:func:`rkd.losses.feature_map_loss`) compares the stage maps of the constrained
``stages``; ``L_J`` (:func:`rkd.losses.jacobian_projection_loss`) compares random projections of
the stage Jacobians w.r.t. the input on ``jacobian_stages``. ``beta = 0`` is "Robust-KD w/o
L_fm", ``gamma = 0`` "w/o L_J" (then no input gradients are computed at all).

One pass of each network serves every term: the student's forward gives the logits and the
stage maps (on an input that requires grad when ``gamma > 0``), the teacher's forward gives its
maps; the Jacobian products reuse those graphs.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from rkd.config.numbers import Number
from rkd.losses import feature_map_loss, jacobian_projection_loss
from rkd.methods.base import Method, StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.methods.teacher import DistillationConfig, check_stage_shapes, frozen_teacher

STAGE = Annotated[int, Field(ge=1)]


class RobustKDMethod(DistillationConfig):
    """Robust-KD (Zhang & Yi 2021), eq. 21: CE + beta * L_fm + gamma * L_J on clean data."""

    name: Literal["robust_kd"]
    beta: Annotated[Number, Field(ge=0)] = 50.0
    gamma: Annotated[Number, Field(ge=0)] = 5e3
    stages: list[STAGE] = Field(default_factory=lambda: [1, 2, 3, 4], description="stages of L_fm (1-based)")
    jacobian_stages: Optional[list[STAGE]] = Field(None, description="stages of L_J; None = the same as 'stages'")
    feature_distance: Literal["cosine", "l2", "mse"] = "cosine"
    n_proj: Annotated[int, Field(ge=1)] = 1
    jacobian_estimator: Literal["per_stage", "joint"] = Field(
        "joint", description="joint: one product for all stages (unbiased estimate of the per-stage loss, "
        "the cost of one stage); per_stage: Algorithm 1 as printed, one product per stage"
    )
    projections: Literal["mean", "sum"] = Field("mean", description="reduction over the n_proj draws")

    @model_validator(mode="after")
    def _stages(self):
        for key in ("stages", "jacobian_stages"):
            st = getattr(self, key)
            if st is not None and (not st or len(set(st)) != len(st)):
                raise ValueError(f"method.{key} must list distinct stage numbers (1-based), got {st}")
        return self

    @property
    def constrained_jacobian_stages(self) -> list[int]:
        return list(self.jacobian_stages if self.jacobian_stages is not None else self.stages)

    def prefers_channels_last(self) -> bool:
        # the Jacobian term's double backward is slower in NHWC: a Robust-KD step 0.76x on the
        # quickstart's model, 2 CPU threads (benchmarks/bench_memory_format.py)
        return self.gamma == 0

    def fp32_only(self) -> str | None:
        if self.gamma == 0:
            return None
        return ("method.gamma > 0: the Jacobian loss is a difference of two nearly equal input-gradient products "
                "(a double backward) that fp16 overflows without a loss scale far below 1 and bf16 or TF32 move by "
                "orders of magnitude (benchmarks/gpu_check.py prints the terms and the gradients' agreement)")

    def check_architecture(self, cfg, model) -> None:
        n = model.num_stages
        for key in ("stages", "jacobian_stages"):
            st = getattr(self, key) or []
            if any(i > n for i in st):
                raise ValueError(f"method.{key} {st}: {cfg.model.arch} has stages 1..{n}")


class RobustKD(Method):
    name = "robust_kd"
    frozen = ("teacher",)

    def __init__(self, model: nn.Module, teacher: nn.Module, *, beta: float = 50.0, gamma: float = 5e3,
                 stages: Sequence[int] = (1, 2, 3, 4), jacobian_stages: Sequence[int] | None = None,
                 feature_distance: str = "cosine", n_proj: int = 1, jacobian_estimator: str = "joint",
                 projections: str = "mean"):
        super().__init__(model)
        self.teacher = teacher
        self.beta, self.gamma = float(beta), float(gamma)
        self.stages = list(stages)
        self.jacobian_stages = list(jacobian_stages if jacobian_stages is not None else stages)
        self.feature_distance = feature_distance
        self.n_proj, self.jacobian_estimator, self.projections = n_proj, jacobian_estimator, projections
        check_stage_shapes(model, teacher, sorted(set(self.stages) | set(self.jacobian_stages)))

    def training_step(self, x, y) -> StepOutput:
        use_j = self.gamma > 0
        x = x.detach().requires_grad_(use_j)
        feats_s, logits = self.model.forward_intermediates(x, return_logits=True)
        with torch.set_grad_enabled(use_j):  # teacher graph only for its input Jacobian
            feats_t = self.teacher.forward_intermediates(x)
        ce = F.cross_entropy(logits, y)
        pick = lambda feats, st: [feats[i - 1] for i in st]  # noqa: E731  (stages are 1-based)

        with torch.set_grad_enabled(self.beta > 0 and torch.is_grad_enabled()):
            fm = feature_map_loss(pick(feats_s, self.stages), pick(feats_t, self.stages), self.feature_distance)
        loss = ce + self.beta * fm if self.beta > 0 else ce
        terms = {"ce": ce, "fm": fm}
        if use_j:
            jl = jacobian_projection_loss(x, pick(feats_s, self.jacobian_stages), pick(feats_t, self.jacobian_stages),
                                          n_proj=self.n_proj, estimator=self.jacobian_estimator,
                                          projections=self.projections)
            loss = loss + self.gamma * jl
            terms["jacobian"] = jl
        return StepOutput(loss=loss, terms=terms, logits=logits.detach())


def _build(cfg: RobustKDMethod, model, models, seed) -> RobustKD:
    teacher = frozen_teacher(cfg, model, models)
    return RobustKD(model, teacher, beta=cfg.beta, gamma=cfg.gamma, stages=cfg.stages,
                    jacobian_stages=cfg.constrained_jacobian_stages, feature_distance=cfg.feature_distance,
                    n_proj=cfg.n_proj, jacobian_estimator=cfg.jacobian_estimator, projections=cfg.projections)


register_method(MethodSpec(config=RobustKDMethod, build=_build))
