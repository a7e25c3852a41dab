"""Model registry: ``@register_model`` on constructors, ``create_model(name, ...)`` to build.

Kept in its own module (no model imports) so that model files can import the decorator
without import cycles. To add a model family, write ``rkd/models/<family>.py`` with
constructors decorated by :func:`register_model` and import the module from
``rkd/models/__init__.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Optional[F] = None, *, name: Optional[str] = None):
    """Register a model constructor under ``name`` (default: the function's ``__name__``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="wrn28_10")``).
    Registering the same name twice with a different function raises ``ValueError``.
    """

    def deco(f: F) -> F:
        key = (name or f.__name__).lower()
        existing = _MODELS.get(key)
        if existing is not None and existing is not f:
            raise ValueError(f"model name {key!r} is already registered by {existing.__module__}")
        _MODELS[key] = f
        return f

    if fn is not None:
        return deco(fn)
    return deco


def list_models() -> List[str]:
    """Sorted names of every registered model constructor."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    """True when ``name`` is a registered model."""
    return name.lower() in _MODELS


def get_model_fn(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; ``ValueError`` listing valid names otherwise."""
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _MODELS[key]


def create_model(name: str, num_classes: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", num_classes=10, width=8)``.

    ``num_classes`` is passed on when given (``None`` keeps the constructor's default); all
    other keyword arguments go to the constructor unchanged, so a typo in a knob raises the
    constructor's ``TypeError``.
    """
    fn = get_model_fn(name)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return fn(**kwargs)


__all__ = ["create_model", "get_model_fn", "is_model", "list_models", "register_model"]
