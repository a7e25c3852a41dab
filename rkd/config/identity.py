"""What identifies a trained model, derived from the schema.

A config field that cannot change what a run computes is marked in the schema with
``Annotated[..., NotInKey(reason)]``:

* ``"run"`` -- where and how a run executes or reports (device, output and cache folders,
  tracking, data-parallel scaling, progress display, the evaluation after training);
* ``"loader"`` -- how the training set is fed (batch size, augmentation, loader workers): it
  changes the trained weights, but not the images of the dataset itself.

:func:`identity` is a config section as plain data without the marked fields; the teacher
cache keys trained models by ``identity(cfg, {"run"})`` and one-time training sets (MACD's
adversarial examples) compare ``identity(cfg.data, {"run", "loader"})``. A new field is part of
every key unless it is marked: forgetting a mark costs a retrain, never a wrong reuse.

A field added after models were cached, whose default computes exactly what every config did
before it existed, is marked ``KeyedUnlessDefault()``: it is left out of every identity while it
holds its default (the keys of existing caches stay valid) and is part of the key otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import BaseModel

RUN, LOADER = "run", "loader"


@dataclass(frozen=True)
class NotInKey:
    """Schema marker: this field is left out of identities that ignore ``reason``."""

    reason: str


@dataclass(frozen=True)
class KeyedUnlessDefault:
    """Schema marker: this field is left out of every identity while it holds its default."""


def _marked(model: BaseModel, name: str, ignore: frozenset[str]) -> bool:
    info = type(model).model_fields[name]
    if any(isinstance(m, KeyedUnlessDefault) for m in info.metadata) and getattr(model, name) == info.default:
        return True
    return any(isinstance(m, NotInKey) and m.reason in ignore for m in info.metadata)


def identity(section: Any, ignore: Iterable[str] = (RUN,)) -> Any:
    """``section`` (a config model, or a list/dict of them) as JSON data without the fields
    marked with a reason in ``ignore``, at any depth."""
    ignore = frozenset(ignore)
    if isinstance(section, BaseModel):
        return {k: identity(getattr(section, k), ignore) for k in type(section).model_fields
                if not _marked(section, k, ignore)}
    if isinstance(section, (list, tuple)):
        return [identity(v, ignore) for v in section]
    if isinstance(section, dict):
        return {k: identity(v, ignore) for k, v in section.items()}
    return json.loads(json.dumps(section))


def identity_key(section: Any, ignore: Iterable[str] = (RUN,)) -> str:
    """SHA-256 (hex) of :func:`identity`, keys sorted."""
    return hashlib.sha256(json.dumps(identity(section, ignore), sort_keys=True).encode()).hexdigest()
