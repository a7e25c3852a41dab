"""The method registry (timm's ``@register_model`` idea, for training methods).

A method module declares everything the run pipeline asks of it in one :class:`MethodSpec`
and registers it at import::

    register_method(MethodSpec(config=MyConfig, build=build_my_method))

* ``config`` -- its config class (a :class:`rkd.config.methods.MethodConfig`): its keys, their
  checks, the trained models it needs (``TRAINED_MODELS``: teachers, sources, an MAE start,
  several at once), its default transfer source;
* ``build(method_cfg, model, models, seed)`` -- the :class:`~rkd.methods.base.Method` that
  trains ``model``; ``models`` maps each role of ``method_cfg.trained_models()`` to its loaded,
  frozen network;
* ``shared_data`` -- training data made once from trained models and reused by every run that
  asks for the same (MACD's one-time adversarial set; Ray shares it through the object store);
* ``epoch_eval`` -- the per-epoch validation (default: clean accuracy).

The pipeline, the schema, the teacher cache, Tune and the quickstart ask the registry; none of
them names a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from rkd.config.methods import MethodConfig, load_plugins, method_config_class, method_names, register_method_config


@dataclass(frozen=True)
class SharedTrainingData:
    """Training data made once from trained models.

    ``identity(cfg)`` -- what the data depends on, as a string (equal strings: the same data),
    or None when this run does not use any; ``build(cfg, train_set, models, device)`` -- the
    data as one tensor, aligned with ``train_set`` (e.g. from a disk cache); ``use(cfg,
    train_set, tensor)`` -- the training set that feeds it to the method."""

    identity: Callable[[Any], str | None]
    build: Callable[..., Any]
    use: Callable[..., Any]


@dataclass(frozen=True)
class MethodSpec:
    config: type[MethodConfig]
    build: Callable[..., nn.Module]
    shared_data: SharedTrainingData | None = None
    epoch_eval: Callable[..., Callable] | None = None

    @property
    def name(self) -> str:
        return self.config.model_fields["name"].annotation.__args__[0]


_SPECS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    register_method_config(spec.config)
    _SPECS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    method_config_class(name)  # loads the plugins; unknown names raise here
    return _SPECS[name]


def list_methods() -> list[str]:
    return method_names()


def require(models: dict[str, nn.Module], role: str, method: str) -> nn.Module:
    """The loaded model of ``role``, or a clear error."""
    if models.get(role) is None:
        raise ValueError(f"method {method} needs a {role} network")
    return models[role]


def build_method(cfg: MethodConfig, model: nn.Module, teacher: nn.Module | None = None, *,
                 source: nn.Module | None = None, models: dict[str, nn.Module] | None = None, seed: int = 0):
    """The method of the ``method`` config section ``cfg`` training ``model``. ``models``: the
    loaded networks by role (``teacher=`` and ``source=`` are shorthands for those roles)."""
    load_plugins()
    models = dict(models or {})
    models.update({k: v for k, v in (("teacher", teacher), ("source", source)) if v is not None})
    unused = sorted({k.split(".")[0] for k in models} - set(cfg.TRAINED_MODELS))
    if unused:
        raise ValueError(f"method {cfg.name} does not use a {', '.join(unused)}")
    return get_method(cfg.name).build(cfg, model, models, seed)
