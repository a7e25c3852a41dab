"""Training methods, one file each; :func:`build_method` maps a method config to one."""

from __future__ import annotations

from torch import nn

from rkd.methods.adversarial import AdversarialTraining
from rkd.methods.base import Method, StepOutput, attack_mode, freeze
from rkd.methods.defensive_distillation import DefensiveDistillation
from rkd.methods.macd import Macd
from rkd.methods.mae import MaeTraining
from rkd.methods.robust_kd import RobustKD
from rkd.methods.shafahi import ShafahiTransfer
from rkd.methods.standard import StandardTraining
from rkd.methods.teacher import check_stage_shapes, init_from_teacher
from rkd.methods.trades import Trades

#: methods whose config has a ``teacher`` section (they need ``teacher=`` in build_method)
TEACHER_METHODS = ("robust_kd", "shafahi", "defensive_distillation", "macd")


def build_method(cfg, model: nn.Module, teacher: nn.Module | None = None, source: nn.Module | None = None,
                 seed: int = 0) -> Method:
    """Build the method described by ``cfg`` (a ``method`` section of the config schema).

    Distillation methods need the ``teacher`` network; it is frozen here, and when
    ``cfg.init == "teacher"`` the student is initialised from it (new head). MACD's student
    starts from its ``source`` (standard) model with ``init: source``, all weights included."""
    if cfg.name == "macd":
        if cfg.init == "source":
            if source is None:
                raise ValueError("macd with init 'source' needs the source model")
            try:
                model.load_state_dict(source.state_dict())
            except RuntimeError as exc:
                raise ValueError("macd init 'source': the student's architecture differs from the source model's; "
                                 f"use the same model or init: scratch ({str(exc)[:300]})") from None
        if teacher is not None:
            freeze(teacher)
        return Macd(model, teacher, teacher_mask_ratio=cfg.teacher_mask_ratio, student_patch=cfg.student_patch,
                    student_mask_ratio=cfg.student_mask_ratio, adversarial=cfg.adversarial, masking=cfg.masking,
                    distill=cfg.distill, projection=cfg.projection, tau=cfg.tau, weight=cfg.weight, seed=seed)
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
    if cfg.name == "mae":
        return MaeTraining(model, stage=cfg.stage, mask_ratio=cfg.mask_ratio)
    raise ValueError(f"unknown method {cfg.name!r}")


__all__ = ["AdversarialTraining", "DefensiveDistillation", "Macd", "MaeTraining", "Method", "RobustKD", "ShafahiTransfer",
           "StandardTraining", "StepOutput", "TEACHER_METHODS", "Trades", "attack_mode", "build_method",
           "check_stage_shapes", "freeze", "init_from_teacher"]
