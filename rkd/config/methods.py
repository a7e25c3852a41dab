"""The ``method`` section of a config: the base of every method's config class, and the
registry that maps ``method.name`` to that class.

Each training method declares its config class in its own module under ``rkd/methods/`` and
registers it there (:func:`rkd.methods.registry.register_method`). The schema validates a
``method`` section by looking its ``name`` up here; nothing in the config layer knows a method
by name. The built-in methods are the package ``rkd.methods``; other modules are loaded from
``$RKD_PLUGINS`` (comma-separated module names or ``.py`` paths) -- both on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

BUILTIN_PLUGINS = "rkd.methods"
PLUGINS_ENV = "RKD_PLUGINS"

_CONFIGS: dict[str, type["MethodConfig"]] = {}
_loaded = False


class MethodConfig(BaseModel):
    """Base of a method's config section (``name`` selects the method).

    Subclasses set ``name: Literal["..."]`` and may override the hooks below; every hook is
    pure (no files, no model builds) except where it says so. (``ExperimentConfig`` and
    ``TeacherConfig`` in the annotations are those of :mod:`rkd.config.schema`, which imports
    this module.)"""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    name: str
    #: fields holding a :class:`~rkd.config.schema.TeacherConfig` (or a list of them): the trained
    #: models a run of this method loads, by role (the field name)
    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ()
    #: the trainable model is a classifier (evaluated on attacks); False for e.g. an MAE
    CLASSIFIER: ClassVar[bool] = True

    def trained_models(self) -> dict[str, Any]:
        """``{role: spec}`` of the trained models this run needs (a list field gives ``role.i``)."""
        out = {}
        for role in self.TRAINED_MODELS:
            value = getattr(self, role)
            if isinstance(value, list):
                out.update({f"{role}.{i}": v for i, v in enumerate(value)})
            elif value is not None:
                out[role] = value
        return out

    def transfer_source(self) -> Any:
        """The model whose examples the transfer protocol uses by default (None: none)."""
        return None

    def prefers_channels_last(self) -> bool:
        """The layout of the trained network when ``model.channels_last`` is not set (for the
        architectures that take it): channels-last unless the method's step is slower there."""
        return True

    def fp32_only(self) -> str | None:
        """Why this method's training step must run in fp32 (no AMP, no TF32, no torch.compile),
        e.g. a double backward; None when it need not. Config checks refuse those settings."""
        return None

    def check(self, cfg: Any) -> None:
        """Checks across config sections; raise ValueError naming the keys."""

    def check_models(self, cfg: Any, models: dict[str, Any]) -> None:
        """Checks against the resolved configs of :meth:`trained_models` (``{role: config}``),
        run by :func:`rkd.config.load_config` after loading them."""

    def check_architecture(self, cfg: Any, model) -> None:
        """Checks against the model built on the meta device (no weights)."""


def register_method_config(cls: type[MethodConfig]) -> type[MethodConfig]:
    name = cls.model_fields["name"].annotation.__args__[0]
    other = _CONFIGS.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"method {name!r} is registered twice ({other.__module__} and {cls.__module__})")
    _CONFIGS[name] = cls
    return cls


def load_plugins() -> None:
    """Import the built-in methods and ``$RKD_PLUGINS`` once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module(BUILTIN_PLUGINS)
    for item in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        import_plugin(item)


def import_plugin(item: str) -> None:
    """Import a plugin module by name, or by path (``.py``) under its file's stem."""
    if not item.endswith(".py"):
        importlib.import_module(item)
        return
    path = Path(item)
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not path.is_file():
        warnings.warn(f"{PLUGINS_ENV}: no plugin file {path}", stacklevel=2)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def method_config_class(name: str) -> type[MethodConfig]:
    load_plugins()
    if name not in _CONFIGS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(method_names())}")
    return _CONFIGS[name]


def method_names() -> list[str]:
    load_plugins()
    return sorted(_CONFIGS)


def default_method() -> MethodConfig:
    return method_config_class("standard")()


def plugin_sources() -> list[str]:
    """Where the registered methods from outside rkd live (module files, else names): what a
    Ray worker imports (:func:`import_plugin`) to know them too."""
    out = []
    for cls in _CONFIGS.values():
        module = sys.modules.get(cls.__module__)
        if cls.__module__.split(".")[0] == "rkd" or module is None:
            continue
        src = getattr(module, "__file__", None) or cls.__module__
        if src not in out:
            out.append(src)
    return out
