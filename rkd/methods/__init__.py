"""Training methods, one file each; :func:`build_method` maps a method config to one."""

from __future__ import annotations

from torch import nn

from rkd.methods.adversarial import AdversarialTraining
from rkd.methods.base import Method, StepOutput, attack_mode, freeze
from rkd.methods.defensive_distillation import DefensiveDistillation
from rkd.methods.robust_kd import RobustKD
from rkd.methods.shafahi import ShafahiTransfer
from rkd.methods.standard import StandardTraining
from rkd.methods.teacher import check_stage_shapes, init_from_teacher
from rkd.methods.trades import Trades

#: methods whose config has a ``teacher`` section (they need ``teacher=`` in build_method)
TEACHER_METHODS = ("robust_kd", "shafahi", "defensive_distillation")


def build_method(cfg, model: nn.Module, teacher: nn.Module | None = None) -> Method:
    """Build the method described by ``cfg`` (a ``method`` section of the config schema).

    Distillation methods need the ``teacher`` network; it is frozen here, and when
    ``cfg.init == "teacher"`` the student is initialised from it (new head)."""
    if cfg.name in TEACHER_METHODS:
        if teacher is None:
            raise ValueError(f"method {cfg.name} needs a teacher network")
        freeze(teacher)
        if cfg.init == "teacher":
            init_from_teacher(model, teacher)
    elif teacher is not None:
        raise ValueError(f"method {cfg.name} does not use a teacher")
    if cfg.name == "standard":
        return StandardTraining(model, temperature=cfg.temperature)
    if cfg.name == "adversarial":
        return AdversarialTraining(model, cfg.attack)
    if cfg.name == "trades":
        return Trades(model, beta=cfg.beta, attack=cfg.attack)
    if cfg.name == "robust_kd":
        return RobustKD(model, teacher, beta=cfg.beta, gamma=cfg.gamma, stages=cfg.stages,
                        jacobian_stages=cfg.constrained_jacobian_stages, feature_distance=cfg.feature_distance,
                        n_proj=cfg.n_proj, jacobian_estimator=cfg.jacobian_estimator, projections=cfg.projections)
    if cfg.name == "shafahi":
        return ShafahiTransfer(model, teacher, lam=cfg.lam)
    if cfg.name == "defensive_distillation":
        return DefensiveDistillation(model, teacher, temperature=cfg.temperature)
    raise ValueError(f"unknown method {cfg.name!r}")


__all__ = ["AdversarialTraining", "DefensiveDistillation", "Method", "RobustKD", "ShafahiTransfer",
           "StandardTraining", "StepOutput", "TEACHER_METHODS", "Trades", "attack_mode", "build_method",
           "check_stage_shapes", "freeze", "init_from_teacher"]
