"""Threat models as tiny step classes (after MadryLab ``robustness/attack_steps.py``).

A threat model is the triple ``random_init / step / project`` for one norm ball. The PGD loop in
:mod:`rkd.attacks.pgd` is written once against this interface; adding a norm means adding a
class here and registering it in :data:`STEPS`.

Conventions (shared by every attack in :mod:`rkd.attacks`):

* Images are float tensors in ``[0, 1]`` of shape ``(N, C, H, W)`` (any shape ``(N, ...)`` works);
  normalisation lives inside the model, so ``eps`` and ``step_size`` are in pixel units of the
  ``[0, 1]`` range (``8/255`` means 8 grey levels).
* Every per-sample quantity (norms, projections) is computed over all non-batch dimensions.
* :meth:`project` always returns a point that is inside the ``eps`` ball around the clean input
  **and** inside the ``[0, 1]`` box. Clamping to the box never leaves the ball, because each
  coordinate of the clean input is itself in ``[0, 1]`` (clamping moves every coordinate towards
  the clean value).
"""

from __future__ import annotations

import torch

__all__ = ["AttackStep", "LinfStep", "L2Step", "STEPS"]

#: Small constant added to gradient norms before division (MadryLab and torchattacks use the
#: same value), so a zero gradient gives a zero step instead of NaN.
GRAD_NORM_EPS = 1e-10


def _per_sample_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample ``p``-norm of ``t`` over all non-batch dims, shaped ``(N, 1, ..., 1)``."""
    n = t.flatten(1).norm(p=p, dim=1)  # (N,)
    return n.view(-1, *([1] * (t.dim() - 1)))


class AttackStep:
    """Base class of a threat model: an ``eps`` ball of some norm plus a step rule.

    Args:
        eps: radius of the ball (pixel units of the [0, 1] range).
        step_size: length of one ascent step (pixel units; its meaning per norm is given by the
            subclass: per-coordinate for Linf, Euclidean length for L2).
    """

    #: name used in configs and :data:`STEPS`.
    norm: str = ""

    def __init__(self, eps: float, step_size: float):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.eps = float(eps)
        self.step_size = float(step_size)

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        """A random point of the ball around ``x``, clamped to [0, 1]."""
        raise NotImplementedError

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step from ``x_adv`` along the (steepest-ascent direction of) ``grad``."""
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` into the ``eps`` ball around ``x`` and then into [0, 1]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, step_size={self.step_size:g})"


class LinfStep(AttackStep):
    """L-infinity threat model: ``||x_adv - x||_inf <= eps``.

    * ``random_init``: ``x + U(-eps, eps)`` independently per coordinate (uniform in the Linf
      ball, as in Madry et al.), then clamped to [0, 1].
    * ``step``: ``x_adv + step_size * sign(grad)`` (steepest ascent for Linf). A zero gradient
      component has sign 0, so it does not move.
    * ``project``: ``x + clamp(x_adv - x, -eps, eps)`` then clamp to [0, 1] (the exact operation
      order of torchattacks' PGD, so both give bit-identical iterates).
    """

    norm = "linf"

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps)
        return (x + noise).clamp(0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return x_adv + self.step_size * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = (x_adv - x).clamp(-self.eps, self.eps)
        return (x + delta).clamp(0.0, 1.0)


class L2Step(AttackStep):
    """L2 threat model: ``||x_adv - x||_2 <= eps`` per sample.

    * ``random_init``: a Gaussian direction scaled to radius ``r * eps`` with ``r ~ U(0, 1)``
      per sample (the torchattacks ``PGDL2`` convention). Note this is uniform in the *radius*,
      not uniform in the ball's volume (which would put almost all mass near the surface in high
      dimension); it starts on average at ``eps/2``. Then clamped to [0, 1].
    * ``step``: ``x_adv + step_size * grad / (||grad||_2 + 1e-10)`` per sample (MadryLab and
      torchattacks use the same ``1e-10``; a zero gradient gives a zero step).
    * ``project``: scale ``delta`` by ``min(1, eps / ||delta||_2)`` per sample, then clamp
      ``x + delta`` to [0, 1] (clamping only shrinks ``||delta||_2``).
    """

    norm = "l2"

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        direction = torch.randn_like(x)
        direction = direction / _per_sample_norm(direction, 2).clamp_min(1e-12)
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
        radius = radius.view(-1, *([1] * (x.dim() - 1)))
        return (x + direction * radius * self.eps).clamp(0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g = grad / (_per_sample_norm(grad, 2) + GRAD_NORM_EPS)
        return x_adv + self.step_size * g

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        norms = _per_sample_norm(delta, 2)
        factor = torch.clamp(self.eps / norms.clamp_min(1e-12), max=1.0)
        return (x + delta * factor).clamp(0.0, 1.0)


#: Registry of threat models by config name.
STEPS: dict[str, type[AttackStep]] = {"linf": LinfStep, "l2": L2Step}


def get_step_class(norm: str) -> type[AttackStep]:
    """Look up a threat model by name (case-insensitive: ``"linf"``, ``"Linf"``, ``"l2"``...)."""
    key = str(norm).lower()
    if key in ("inf", "l_inf"):
        key = "linf"
    if key not in STEPS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {sorted(STEPS)}")
    return STEPS[key]
