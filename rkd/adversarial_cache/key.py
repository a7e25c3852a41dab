"""Content-addressed keys of the adversarial cache.

The key of an entry is ``sha256(canonical_json(parts))`` (lower-case hex) where ``parts`` is::

    {
      "format": FORMAT_VERSION,              # "rkd-adversarial-cache/v1"
      "model_sha256": model_fingerprint(model),
      "attack": <the attack dict, as given>,
      "dataset_fingerprint": <str, e.g. TensorImageDataset.fingerprint()>,
      "seed": int(seed),
      "input_size": [224],                   # only for a model that resizes its inputs
    }

* ``input_size``: the sides the model's :class:`rkd.models.normalize.InputNormalize` layers
  resize inputs to (``model.input_size``). It is not in the state dict, yet the same weights at
  32 and 224 px are different functions with different adversarial examples. Models that do not
  resize have no such part, so their keys are what they were.
* :func:`model_fingerprint` -- SHA-256 over the model's ``state_dict()`` (parameters **and**
  buffers, e.g. BatchNorm running statistics, which change eval-mode outputs), entries in
  sorted name order; for each entry the bytes ``name | dtype | shape |`` followed by the raw
  little-endian bytes of the tensor, detached, moved to CPU and made contiguous. The model's
  class, train/eval mode and ``requires_grad`` flags are *not* hashed (two models with equal
  state dicts share a key; a ``torch.compile``-wrapped model has ``_orig_mod.``-prefixed names
  and so a different key).
* :func:`canonical_json` -- ``json.dumps(sort_keys=True, separators=(",", ":"),
  allow_nan=False)`` after normalising values: tuples -> lists, numpy / 0-d torch scalars ->
  Python scalars; floats are written with Python's ``repr`` (the shortest string that
  round-trips to the same double, so distinct floats never collide). NaN/inf are rejected.
  ``1`` and ``1.0`` are different JSON -- callers that want spelling-independent keys
  canonicalise the attack first (:func:`rkd.adversarial_cache.build.pgd_attack_spec` does).
* Bump :data:`FORMAT_VERSION` whenever the hashed parts or the stored layout change meaning:
  old entries then simply stop being found.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Union

import numpy as np
import torch
import torch.nn as nn

FORMAT_VERSION = "rkd-adversarial-cache/v1"

__all__ = ["FORMAT_VERSION", "model_fingerprint", "canonical_json", "key_parts", "key_from_parts",
           "cache_key", "is_key"]


def model_fingerprint(model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> str:
    """SHA-256 hex of a model's ``state_dict()`` (or of a state dict given directly).

    Hashed, per entry in sorted name order: ``f"{name}|{dtype}|{tuple(shape)}|"`` then the
    tensor's raw bytes (CPU, contiguous). Non-tensor state-dict values (rare ``extra_state``)
    are hashed via :func:`canonical_json`.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if torch.is_tensor(value):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{name}|object|".encode())
            h.update(canonical_json(value).encode())
        h.update(b";")
    return h.hexdigest()


def _normalise(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} cannot be part of a cache key")
        return float(obj)
    if isinstance(obj, np.generic):
        return _normalise(obj.item())
    if torch.is_tensor(obj):
        if obj.numel() != 1 or obj.dim() != 0:
            raise TypeError("only 0-d tensors can be part of a cache key")
        return _normalise(obj.item())
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cache-key dict keys must be strings, got {k!r}")
            out[k] = _normalise(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    raise TypeError(f"value of type {type(obj).__name__} cannot be part of a cache key: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text of ``obj`` (see the module docstring for the rules)."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True)


def input_sizes(model: nn.Module) -> list[int]:
    """The sides ``model``'s input-normalisation layers resize to (empty when none resizes)."""
    from rkd.models.normalize import InputNormalize

    return [int(m.size) for m in model.modules() if isinstance(m, InputNormalize) and m.size is not None]


def key_parts(model: Union[nn.Module, Mapping[str, torch.Tensor], str], attack: Mapping[str, Any],
              dataset_fingerprint: str, seed: int) -> dict:
    """The dict that :func:`cache_key` hashes (also stored in each entry's ``meta.json``).

    ``model`` may be an ``nn.Module``, a state dict, or an already computed
    :func:`model_fingerprint` (64 hex characters); only a module carries its ``input_size``.
    """
    if isinstance(model, str):
        if not is_key(model):
            raise ValueError("a model given as a string must be a 64-character sha256 hex digest")
        model_hash = model.lower()
    else:
        model_hash = model_fingerprint(model)
    if not isinstance(attack, Mapping):
        raise TypeError(f"attack must be a dict, got {type(attack).__name__}")
    if not isinstance(dataset_fingerprint, str) or not dataset_fingerprint:
        raise ValueError("dataset_fingerprint must be a non-empty string")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    parts = {
        "format": FORMAT_VERSION,
        "model_sha256": model_hash,
        "attack": _normalise(dict(attack)),
        "dataset_fingerprint": dataset_fingerprint,
        "seed": int(seed),
    }
    sizes = input_sizes(model) if isinstance(model, nn.Module) else []
    if sizes:
        parts["input_size"] = sizes
    return parts


def key_from_parts(parts: Mapping[str, Any]) -> str:
    """``sha256(canonical_json(parts))`` hex."""
    return hashlib.sha256(canonical_json(parts).encode("ascii")).hexdigest()


def cache_key(model: Union[nn.Module, Mapping[str, torch.Tensor], str], attack: Mapping[str, Any],
              dataset_fingerprint: str, seed: int) -> str:
    """The content-addressed key (64 lower-case hex characters) of an adversarial set."""
    return key_from_parts(key_parts(model, attack, dataset_fingerprint, seed))


def is_key(name: str) -> bool:
    """Whether ``name`` looks like a cache key (64 hex characters)."""
    return isinstance(name, str) and len(name) == 64 and all(c in "0123456789abcdefABCDEF" for c in name)
