"""Training methods, one module each; every module registers its :class:`MethodSpec` (config
class, builder, trained models it needs, shared training data) with :mod:`.registry`.
Importing this package registers the built-in methods."""

from __future__ import annotations

from rkd.methods import adversarial, defensive_distillation, macd, mae, robust_kd, shafahi, standard, trades  # noqa: F401
from rkd.methods.adversarial import AdversarialTraining
from rkd.methods.base import Method, StepOutput, attack_mode, freeze
from rkd.methods.defensive_distillation import DefensiveDistillation
from rkd.methods.macd import Macd
from rkd.methods.mae import MaeTraining
from rkd.methods.registry import MethodSpec, SharedTrainingData, build_method, get_method, list_methods, register_method
from rkd.methods.robust_kd import RobustKD
from rkd.methods.shafahi import ShafahiTransfer
from rkd.methods.standard import StandardTraining
from rkd.methods.teacher import check_stage_shapes, init_from_teacher
from rkd.methods.trades import Trades

__all__ = ["AdversarialTraining", "DefensiveDistillation", "Macd", "MaeTraining", "Method", "MethodSpec", "RobustKD",
           "ShafahiTransfer", "SharedTrainingData", "StandardTraining", "StepOutput", "Trades", "attack_mode",
           "build_method", "check_stage_shapes", "freeze", "get_method", "init_from_teacher", "list_methods",
           "register_method"]
