"""Adversarial attacks over [0, 1] image tensors (pure torch; no ray, no mlflow).

Conventions for every attack here: inputs are float ``(N, C, H, W)`` tensors in [0, 1];
normalisation lives inside the model, so ``eps`` is in pixel units; the model is any
``nn.Module`` mapping x -> logits; attacks leave the model's train/eval mode as they found it
and never touch parameter ``.grad``; the result is detached and in [0, 1].

* :func:`pgd` -- the one projected-gradient loop (Linf / L2 threat models from
  :mod:`rkd.attacks.steps`, random start, restarts, MI-FGSM momentum, targeted);
  :func:`fgsm` and :func:`mifgsm` are presets of it; :class:`PGDAttack` is a configured PGD.
* :func:`apgd` -- Auto-PGD (Croce & Hein, 2020) written here: APGD-CE, APGD-DLR and APGD-T
  (targeted DLR against the k most likely wrong classes), the reference's step-size schedule;
  it attacks only correctly classified points and drops each point once it is fooled.
* :func:`jsma`, :func:`jsma_success_rate` -- Papernot's targeted saliency-map attack.
* :mod:`rkd.attacks.torchattacks_wrappers` -- AutoAttack, CW, FAB / FAB-T, Jitter, Square from
  torchattacks (imported lazily). Note torchattacks' AutoAttack runs 10-iteration APGD / APGD-T
  / FAB, not the reference's 100; AutoAttack's reference set is the kinds ``apgd`` (CE),
  ``apgd`` (``loss="dlr", targets=9``), ``fab`` (``targets=9``) and ``square`` (5000 queries).
* :func:`build_attack` -- ``build_attack("pgd", norm="l2", eps=0.5, steps=7)`` returns a
  callable ``attack(model, x, y) -> x_adv`` for configs and evaluation grids.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn as nn

from rkd.config.schema import ATTACK_KINDS

from . import torchattacks_wrappers as _ta
from .apgd import apgd
from .jsma import jsma, jsma_success_rate
from .pgd import PGDAttack, default_step_size, fgsm, mifgsm, pgd
from .steps import STEPS, AttackStep, L2Step, LinfStep, get_step_class

__all__ = [
    "pgd", "fgsm", "mifgsm", "PGDAttack", "default_step_size", "apgd",
    "jsma", "jsma_success_rate",
    "AttackStep", "LinfStep", "L2Step", "STEPS", "get_step_class",
    "build_attack", "ATTACK_KINDS", "BuiltAttack",
]


def _pgd_fn(model, x, y, **params):
    return PGDAttack(**params)(model, x, y)


# kind -> function(model, x, y, **params). JSMA is targeted and exported separately.
_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": fgsm,
    "pgd": _pgd_fn,
    "mifgsm": mifgsm,
    "cw": _ta.cw,
    "autoattack": _ta.autoattack,
    "jitter": _ta.jitter,
    "square": _ta.square,
    "apgd": apgd,
    "fab": _ta.fab,
}

# the config schema owns the list of kinds; every kind it accepts has a builder here
if set(_ATTACKS) != set(ATTACK_KINDS):  # pragma: no cover - a kind added on one side only
    raise ImportError(f"attack kinds of the schema {ATTACK_KINDS} and of rkd.attacks {tuple(_ATTACKS)} differ")

# Parameters accepted by each kind (checked when the attack is built, not when it first runs).
_PARAMS: dict[str, inspect.Signature] = {
    "pgd": inspect.signature(PGDAttack),
    **{k: inspect.signature(f) for k, f in _ATTACKS.items() if k != "pgd"},
}


class BuiltAttack:
    """A configured attack: ``attack(model, x, y) -> x_adv``; ``describe()`` gives a flat dict
    (``{"attack": kind, **params}``) for results files."""

    def __init__(self, kind: str, params: dict[str, Any]):
        self.kind = kind
        self.params = dict(params)
        self._fn = _ATTACKS[kind]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._fn(model, x, y, **self.params)

    def describe(self) -> dict[str, Any]:
        if self.kind == "pgd":
            return PGDAttack(**self.params).describe()
        return {"attack": self.kind, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"BuiltAttack({self.kind!r}, {args})"


def build_attack(kind: str, **params: Any) -> BuiltAttack:
    """Build ``attack(model, x, y) -> x_adv`` from a kind name and its parameters.

    Kinds and parameters (defaults in the underlying functions):

    * ``"fgsm"``: ``eps`` (Linf), ``targeted``.
    * ``"pgd"``: ``norm`` ("linf"/"l2"), ``eps``, ``steps``, ``step_size`` (default
      2.5*eps/steps), ``random_start``, ``restarts``, ``momentum``, ``targeted``.
    * ``"mifgsm"``: ``eps``, ``steps`` (7), ``decay`` (1.0), ``targeted``.
    * ``"cw"``: ``c``, ``kappa``, ``steps``, ``lr``.
    * ``"autoattack"``: ``norm``, ``eps``, ``n_classes``, ``version``, ``seed``.
    * ``"jitter"``: ``eps``, ``steps``, ``alpha``, ``scale``, ``std``, ``random_start``, ``seed``.
    * ``"square"``: ``norm``, ``eps``, ``n_queries``, ``n_restarts``, ``p_init``, ``loss``,
      ``seed``.
    * ``"apgd"``: ``norm``, ``eps``, ``steps`` (100), ``restarts`` (1), ``loss`` ("ce" or
      "dlr"), ``targets`` (0 = untargeted; k = APGD-T against the k most likely wrong classes,
      needs ``loss="dlr"``), ``rho`` (0.75), ``seed``.
    * ``"fab"``: ``norm``, ``eps``, ``n_classes`` (required), ``steps`` (100), ``restarts``,
      ``targets`` (0 = untargeted FAB; k = FAB-T against the k most likely wrong classes),
      ``seed``.

    Raises:
        ValueError: unknown kind (the message lists the valid kinds).
        TypeError: unknown or missing parameters for that kind.
    """
    key = str(kind).lower()
    if key not in _ATTACKS:
        raise ValueError(f"unknown attack kind {kind!r}; valid kinds: {list(ATTACK_KINDS)}")
    sig = _PARAMS[key]
    if key == "pgd":
        sig.bind(**params)  # PGDAttack(**params)
        PGDAttack(**params)  # validates the norm
    else:
        sig.bind(None, None, None, **params)  # (model, x, y, **params)
    return BuiltAttack(key, params)
