"""Helpers for methods that learn from a frozen teacher: their common config, shape checks and
student initialisation. (Where a teacher comes from -- a run directory or a config trained
once -- is :mod:`rkd.teachers`.)"""

from __future__ import annotations

from typing import ClassVar, Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from rkd.config.methods import MethodConfig
from rkd.config.schema import TeacherConfig
from rkd.methods.base import freeze
from rkd.methods.registry import require


class DistillationConfig(MethodConfig):
    """Common to the methods that learn from one frozen teacher."""

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("teacher",)
    teacher: TeacherConfig
    init: Literal["teacher", "scratch"] = Field(
        "teacher", description="student starts from the teacher's weights with a new head, or from scratch"
    )


def frozen_teacher(cfg: DistillationConfig, student: nn.Module, models: dict[str, nn.Module]) -> nn.Module:
    """The run's teacher, frozen; the student initialised from it when ``cfg.init`` says so."""
    teacher = freeze(require(models, "teacher", cfg.name))
    if cfg.init == "teacher":
        init_from_teacher(student, teacher)
    return teacher


def check_stage_shapes(student: nn.Module, teacher: nn.Module, stages: Sequence[int]) -> None:
    """Raise a clear error when the constrained stages (1-based) of student and teacher differ
    in number of channels (their spatial sizes follow from the same input)."""
    for name, m in (("student", student), ("teacher", teacher)):
        if not hasattr(m, "stage_channels"):
            raise TypeError(f"the {name} ({type(m).__name__}) has no feature taps (forward_intermediates)")
    for i in stages:
        if i > min(student.num_stages, teacher.num_stages):
            raise ValueError(f"stage {i} does not exist: "
                             f"student has {student.num_stages}, teacher {teacher.num_stages}")
        cs, ct = student.stage_channels[i - 1], teacher.stage_channels[i - 1]
        if cs != ct:
            raise ValueError(f"stage {i}: student has {cs} channels, teacher {ct}; use the teacher's architecture")


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the teacher's backbone weights into the student and give the student a freshly
    initialised head for its own classes (the Robust-KD and Shafahi recipe)."""
    num_classes = student.num_classes
    head_keys = _head_keys(teacher)
    state = {k: v for k, v in teacher.state_dict().items() if k not in head_keys}
    own = student.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"cannot initialise the student from the teacher: {len(bad)} weights differ in name or "
                         f"shape (e.g. {bad[:3]}); give the student the teacher's architecture or use init: scratch")
    missing = [k for k in own if k not in state and k not in head_keys]
    if missing:
        raise ValueError(f"the teacher lacks student weights {missing[:3]}; use init: scratch")
    with torch.no_grad():
        student.load_state_dict({**own, **state})
    student.reset_classifier(num_classes)


def _head_keys(model: nn.Module) -> set[str]:
    """state_dict names of the classifier's parameters and buffers."""
    head = model.get_classifier()
    ids = {id(t) for t in list(head.parameters()) + list(head.buffers())}
    return {n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if id(t) in ids}
