"""Generate an adversarial set once (PGD against a fixed source model) and cache it.

Robust-KD Stage 2 (PAPERS.md section 3): PGD, 40 steps, Linf eps 8/255 against the standard
model, generated once and reused every epoch. :func:`build_adversarial_set` produces the set;
:func:`cached_adversarial_set` keys it by content and goes through the store.

Determinism: the set is a function of (model weights, attack, data, seed, batch size, device
kind). The random starts are drawn batch by batch from the global torch RNG seeded with
``seed``, so the batch size is part of the hashed attack dict in
:func:`cached_adversarial_set`; the device is recorded in ``meta.json`` but not hashed (a set
built on GPU is reused on CPU and vice versa; they differ only by floating-point rounding).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from rkd.attacks import PGDAttack, pgd
from rkd.data.loader import make_loader
from rkd.models.inference import inference_copy
from rkd.models.modes import evaluation_mode

from .key import key_from_parts, key_parts
from .store import PathLike, get_or_build

__all__ = ["pgd_attack_spec", "build_adversarial_set", "cached_adversarial_set", "cached_attack_set",
           "run_attack_over", "untransformed"]

_PGD_FIELDS = {f.name for f in fields(PGDAttack)}


def pgd_attack_spec(attack_params: Mapping[str, Any]) -> dict:
    """Canonical, fully resolved PGD parameters (the dict that is hashed and passed to
    :func:`rkd.attacks.pgd`).

    Accepts :class:`rkd.attacks.PGDAttack` fields (``norm, eps, steps, step_size,
    random_start, restarts, momentum``), e.g. ``AttackConfig.attack_params()`` of a ``pgd``
    attack, plus an optional ``"attack"``/``"kind"`` entry that must be ``"pgd"``. Returns
    ``{"attack": "pgd", "norm", "eps", "steps", "step_size" (resolved default
    2.5*eps/steps), "random_start", "restarts", "momentum", "targeted": False}`` with numbers
    as float/int, so ``eps=1`` and ``eps=1.0`` (or an explicit default step size) give the same
    key. Untargeted only: the labels of the data are the true labels.

    Raises:
        ValueError: another attack kind, targeted, or invalid values. TypeError: unknown keys.
    """
    p = dict(attack_params)
    for k in ("attack", "kind"):
        if k in p:
            kind = p.pop(k)
            if str(kind).lower() != "pgd":
                raise ValueError(f"the adversarial cache builds PGD sets only, got {k}={kind!r}")
    unknown = sorted(set(p) - _PGD_FIELDS)
    if unknown:
        raise TypeError(f"unknown PGD parameter(s) {unknown}; valid: {sorted(_PGD_FIELDS)}")
    if p.get("targeted"):
        raise ValueError("targeted attacks are not supported by the adversarial cache")
    if "eps" not in p or "steps" not in p:
        raise TypeError("attack_params needs at least 'eps' and 'steps'")
    a = PGDAttack(**p)
    if a.eps < 0 or a.steps < 0 or a.restarts < 1 or a.momentum < 0:
        raise ValueError(f"invalid PGD parameters {p}")
    return {
        "attack": "pgd", "norm": a.norm, "eps": float(a.eps), "steps": int(a.steps),
        "step_size": float(a.resolved_step_size), "random_start": bool(a.random_start),
        "restarts": int(a.restarts), "momentum": float(a.momentum), "targeted": False,
    }


def untransformed(dataset: Dataset) -> Dataset:
    """``dataset`` without augmentation (as :func:`rkd.evaluation.robust_accuracy.eval_subset`:
    datasets with ``with_transform`` get ``with_transform(None)``, tensors shared)."""
    if hasattr(dataset, "with_transform"):
        return dataset.with_transform(None)
    if getattr(dataset, "transform", None) is not None:
        raise ValueError(f"{type(dataset).__name__} has a transform and no with_transform(); "
                         "pass an un-augmented dataset")
    return dataset


def build_adversarial_set(model: nn.Module, dataset: Dataset, attack_params: Mapping[str, Any], seed: int,
                          batch_size: int = 256, device: Union[str, torch.device] = "cpu"
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """PGD adversarial examples of every item of ``dataset``, in order, without augmentation.

    The model runs in eval mode (its previous mode is restored afterwards); the global torch
    RNG (CPU, and CUDA when initialised) is seeded with ``seed`` and restored afterwards, so
    the caller's random stream is unaffected. Python/NumPy RNGs are not touched. The model is
    expected to already live on ``device``.

    Returns:
        ``(adv, labels)``: CPU float32 ``(N, C, H, W)`` in [0, 1] within the eps ball of the
        clean images, and CPU int64 ``(N,)``.
    """
    spec = pgd_attack_spec(attack_params)
    params = {k: v for k, v in spec.items() if k != "attack"}
    return run_attack_over(model, dataset, lambda m, x, y: pgd(m, x, y, **params), seed, batch_size, device)


def run_attack_over(model: nn.Module, dataset: Dataset, attack: Callable, seed: int, batch_size: int = 256,
                    device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """``attack(model, x, y)`` over every item of ``dataset`` in order, without augmentation,
    model in eval mode, global torch RNG seeded with ``seed`` and restored afterwards (see
    :func:`build_adversarial_set`). Returns CPU ``(adv float32, labels int64)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    loader = make_loader(untransformed(dataset), int(batch_size), shuffle=False)
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    advs, labels = [], []
    try:
        with evaluation_mode(model):
            torch.manual_seed(int(seed))
            frozen = None
            for x, y in loader:
                x = x.to(device=device, dtype=torch.float32)
                y = torch.as_tensor(y).to(device)
                if frozen is None:  # batch norms folded, same logits (rkd.models.inference)
                    frozen = inference_copy(model, x[:64])
                x_adv = attack(frozen, x, y)
                advs.append(x_adv.detach().to("cpu", torch.float32))
                labels.append(y.detach().to("cpu", torch.int64))
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    if not advs:
        raise ValueError("the dataset is empty")
    return torch.cat(advs).contiguous(), torch.cat(labels)


def cached_attack_set(root: PathLike, model: nn.Module, dataset: Dataset, kind: str, attack_params: Mapping[str, Any],
                      seed: int, *, batch_size: int = 256, device: Union[str, torch.device] = "cpu",
                      dataset_fingerprint: Optional[str] = None, return_key: bool = False):
    """Any attack of :func:`rkd.attacks.build_attack` (``kind`` + its parameters) over
    ``dataset``, through the same content-addressed store as :func:`cached_adversarial_set`
    (PGD goes through that function, so both spellings share entries). Used for the transfer
    protocol: the examples of a source model, classified by other models."""
    if kind == "pgd":
        return cached_adversarial_set(root, model, dataset, attack_params, seed, batch_size=batch_size, device=device,
                                      dataset_fingerprint=dataset_fingerprint, return_key=return_key)
    from rkd.attacks import build_attack

    fn = build_attack(kind, **attack_params)
    spec = {"attack": kind, **{k: v for k, v in fn.describe().items() if k not in ("attack", "kind", "name")}}
    return _through_store(root, model, dataset, spec, seed, batch_size, device, dataset_fingerprint, return_key,
                          lambda: run_attack_over(model, dataset, fn, seed, batch_size, device))


def _through_store(root, model, dataset, spec, seed, batch_size, device, dataset_fingerprint, return_key, build):
    if dataset_fingerprint is None:
        if not hasattr(dataset, "fingerprint"):
            raise TypeError(f"{type(dataset).__name__} has no fingerprint(); pass dataset_fingerprint=")
        dataset_fingerprint = dataset.fingerprint()
    parts = key_parts(model, {**spec, "batch_size": int(batch_size)}, dataset_fingerprint, seed)
    key = key_from_parts(parts)
    info = {"key_parts": parts, "device": str(torch.device(device)),
            "dataset_name": getattr(dataset, "name", None)}
    adv, labels = get_or_build(root, key, build, info=info)
    return (adv, labels, key) if return_key else (adv, labels)


def cached_adversarial_set(root: PathLike, model: nn.Module, dataset: Dataset, attack_params: Mapping[str, Any],
                           seed: int, *, batch_size: int = 256, device: Union[str, torch.device] = "cpu",
                           dataset_fingerprint: Optional[str] = None, return_key: bool = False):
    """:func:`build_adversarial_set` through the content-addressed store under ``root``.

    The key hashes the model's state dict, ``{**pgd_attack_spec(attack_params), "batch_size":
    batch_size}``, the dataset fingerprint (``dataset.fingerprint()`` unless given; transforms
    are not part of it, and none are applied) and the seed. Returns ``(adv, labels)``, or
    ``(adv, labels, key)`` with ``return_key=True``.
    """
    spec = pgd_attack_spec(attack_params)
    return _through_store(root, model, dataset, spec, seed, batch_size, device, dataset_fingerprint, return_key,
                          lambda: build_adversarial_set(model, dataset, spec, seed, batch_size=batch_size,
                                                        device=device))
