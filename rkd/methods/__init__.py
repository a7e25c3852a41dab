"""Training methods, one module each; every module registers its :class:`MethodSpec` (config
class, builder, trained models it needs, shared training data) with :mod:`.registry`.
Importing this package registers the built-in methods."""

from __future__ import annotations

from rkd.methods import (  # noqa: F401
    adaad,
    adversarial,
    ard,
    defensive_distillation,
    iad,
    linear_eval,
    macd,
    mae,
    mtard,
    robust_kd,
    rocl,
    rslad,
    shafahi,
    standard,
    trades,
)
from rkd.methods.adaad import Adaad
from rkd.methods.adversarial import AdversarialTraining
from rkd.methods.ard import Ard
from rkd.methods.base import Method, StepOutput, attack_mode, freeze
from rkd.methods.defensive_distillation import DefensiveDistillation
from rkd.methods.iad import Iad
from rkd.methods.linear_eval import LinearEval
from rkd.methods.macd import Macd
from rkd.methods.mae import MaeTraining
from rkd.methods.mtard import Mtard
from rkd.methods.registry import MethodSpec, SharedTrainingData, build_method, get_method, list_methods, register_method
from rkd.methods.robust_kd import RobustKD
from rkd.methods.rocl import Rocl
from rkd.methods.rslad import Rslad
from rkd.methods.shafahi import ShafahiTransfer
from rkd.methods.standard import StandardTraining
from rkd.methods.teacher import check_stage_shapes, init_from_teacher
from rkd.methods.trades import Trades

__all__ = [
    "Adaad", "AdversarialTraining", "Ard", "DefensiveDistillation", "Iad", "LinearEval", "Macd", "MaeTraining",
    "Method", "MethodSpec", "Mtard", "RobustKD", "Rocl", "Rslad", "ShafahiTransfer", "SharedTrainingData",
    "StandardTraining", "StepOutput", "Trades", "attack_mode", "build_method", "check_stage_shapes", "freeze",
    "get_method", "init_from_teacher", "list_methods", "register_method",
]
