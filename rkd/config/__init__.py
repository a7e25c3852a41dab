"""Typed, validated experiment configs (YAML) and their loader."""

from rkd.config.errors import ConfigError
from rkd.config.loader import (
    config_from_dict,
    dump_config,
    flatten,
    list_presets,
    load_config,
    save_config,
)
from rkd.config.numbers import format_eps, parse_number
from rkd.config.schema import (
    AttackConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    StepSweepConfig,
    TrackingConfig,
    TrainAttackConfig,
    TrainConfig,
)

__all__ = [
    "AttackConfig", "ConfigError", "DataConfig", "EvalConfig", "ExperimentConfig", "ModelConfig",
    "StepSweepConfig", "TrackingConfig", "TrainAttackConfig", "TrainConfig", "config_from_dict",
    "dump_config", "flatten", "format_eps", "list_presets", "load_config", "parse_number",
    "save_config",
]
