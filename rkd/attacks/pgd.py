"""One projected-gradient loop for every first-order attack: PGD, FGSM, MI-FGSM.

``pgd`` is Madry et al.'s projected gradient descent (ascent on the loss) with optional random
start, restarts and momentum (Dong et al.'s MI-FGSM). FGSM and MI-FGSM are thin presets over it.

Conventions
-----------
* ``x`` is a float tensor in [0, 1]; ``eps`` / ``step_size`` are in pixel units (normalisation
  is inside the model). The result is detached, on ``x``'s device, with ``x``'s dtype, inside
  the eps ball around ``x`` and inside [0, 1].
* The model's train/eval mode is **not** touched: the attack runs the model in whatever mode
  the caller left it (in train mode, BatchNorm running stats get updated by the attack's forward
  passes and dropout makes gradients random -- the caller decides). Gradients are taken w.r.t.
  the input only with :func:`torch.autograd.grad`, so parameter ``.grad`` fields are untouched
  and ``requires_grad`` of parameters is never changed. The loop enables autograd itself, so it
  also works when called under ``torch.no_grad()``.
* Loss: per-sample losses (``loss_fn(logits, y) -> (N,)``, default cross-entropy) are **summed**
  before differentiation, so each sample's gradient is independent of the batch size (the sign
  step and the L2-normalised step are invariant to the 1/N of a mean anyway).
* The returned point is the **last iterate** of each run (Madry et al.), not the best iterate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .steps import AttackStep, get_step_class

__all__ = ["pgd", "fgsm", "mifgsm", "PGDAttack", "default_step_size"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Madry et al.'s rule of thumb: step = 2.5 * eps / steps, so that ``steps`` steps can travel
#: 2.5 eps -- enough to reach the boundary of the ball from any start and move along it.
DEFAULT_STEP_FACTOR = 2.5


def default_step_size(norm: str, eps: float, steps: int) -> float:
    """Default PGD step size: ``2.5 * eps / steps`` for both Linf and L2 (Madry et al.).

    For ``steps == 0`` the step size is irrelevant and 0 is returned.
    """
    get_step_class(norm)  # validates the norm name
    if steps <= 0:
        return 0.0
    return DEFAULT_STEP_FACTOR * float(eps) / int(steps)


def _per_sample_loss(loss_fn: Optional[LossFn], logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss_fn is None:
        return F.cross_entropy(logits, y, reduction="none")
    return loss_fn(logits, y)


def _run_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: AttackStep,
    steps: int,
    random_start: bool,
    momentum: float,
    sign: float,
    loss_fn: Optional[LossFn],
    x_init: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One PGD run from one start. Returns the detached last iterate."""
    if x_init is not None:
        x_adv = x_init.detach().clone()
    else:
        x_adv = threat.random_init(x) if random_start else x.clone()
    x_adv = threat.project(x_adv, x).detach()
    g_mom = torch.zeros_like(x) if momentum > 0 else None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        loss = _per_sample_loss(loss_fn, logits, y)
        # scalar loss functions are allowed for the gradient; per-sample ones are summed.
        objective = sign * loss.sum()
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = x_adv.detach()
        if g_mom is not None:
            # MI-FGSM (Dong et al. 2018): g <- mu * g + grad / ||grad||_1 (per sample).
            l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
            g_mom = momentum * g_mom + grad / l1.view(-1, *([1] * (x.dim() - 1)))
            grad = g_mom
        x_adv = threat.project(threat.step(x_adv, grad), x).detach()
    return x_adv


@torch.no_grad()
def _score(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    targeted: bool,
    loss_fn: Optional[LossFn],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(success, objective) per sample; larger objective = stronger attack."""
    logits = model(x_adv)
    loss = _per_sample_loss(loss_fn, logits, y)
    if loss.dim() != 1 or loss.shape[0] != x_adv.shape[0]:
        raise ValueError(
            "restarts > 1 needs a loss_fn returning per-sample losses of shape (N,), "
            f"got shape {tuple(loss.shape)}"
        )
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) and y.dim() == 1:
        pred = logits.argmax(dim=1)
        success = pred == y if targeted else pred != y
    else:  # soft targets: success is undefined, rank by loss only
        success = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
    objective = -loss if targeted else loss
    return success, objective


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    steps: int,
    step_size: Optional[float] = None,
    random_start: bool = True,
    restarts: int = 1,
    momentum: float = 0.0,
    targeted: bool = False,
    loss_fn: Optional[LossFn] = None,
    x_init: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss inside an ``eps`` ball (Madry et al., 2018).

    Args:
        model: any ``nn.Module`` mapping ``x`` (in [0, 1]) to logits. Its mode is not changed.
        x: clean inputs, ``(N, C, H, W)`` floats in [0, 1].
        y: labels ``(N,)`` (true labels, or target labels if ``targeted``). With a custom
            ``loss_fn`` it may be anything ``loss_fn`` accepts (e.g. soft targets).
        norm: ``"linf"`` or ``"l2"`` (see :mod:`rkd.attacks.steps`).
        eps: radius of the ball in pixel units. ``eps == 0`` returns ``x.clone()``.
        steps: number of gradient steps. ``steps == 0`` returns ``x.clone()`` (no random start
            either), so the "0 steps" point of a step-count sweep is the clean accuracy.
        step_size: step length; default ``2.5 * eps / steps`` for both norms (Madry et al.).
            Linf: per-coordinate sign step; L2: Euclidean length of the normalised step.
        random_start: start from a random point of the ball (see the step class for the
            distribution) instead of ``x``.
        restarts: number of independent runs. Per sample the result of the best run is kept:
            a run that succeeds (misclassified; for ``targeted``: classified as the target)
            beats one that does not, and among equals the higher loss (lower for targeted)
            wins. The first run consumes the RNG exactly like ``restarts=1``, and later runs
            only replace it when strictly better, so on the same seed restarts are never worse
            than a single run. Without ``random_start`` every run would be identical, so
            ``restarts`` is then treated as 1.
        momentum: ``mu > 0`` turns on MI-FGSM momentum (Dong et al., 2018):
            ``g <- mu * g + grad / ||grad||_1`` per sample, then the norm's step on ``g``.
        targeted: minimise the loss towards the labels ``y`` instead of maximising it.
        loss_fn: ``loss_fn(logits, y) -> (N,)`` per-sample losses to maximise (default
            cross-entropy). A scalar loss is accepted for ``restarts == 1``.
        x_init: explicit start of the (first) run instead of ``random_start``, projected into
            the ball (TRADES starts at ``x + 0.001 * N(0, 1)``).

    Returns:
        The adversarial inputs, detached, same shape/dtype/device as ``x``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    step_cls = get_step_class(norm)
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    if step_size is None:
        step_size = default_step_size(norm, eps, steps)
    threat = step_cls(eps, step_size)
    if isinstance(y, torch.Tensor):
        y = y.detach().to(x.device)
    sign = -1.0 if targeted else 1.0
    n_runs = restarts if random_start else 1

    with torch.enable_grad():
        best = _run_once(model, x, y, threat, steps, random_start, momentum, sign, loss_fn, x_init)
        if n_runs == 1:
            return best
        best_ok, best_obj = _score(model, best, y, targeted, loss_fn)
        for _ in range(n_runs - 1):
            cand = _run_once(model, x, y, threat, steps, random_start, momentum, sign, loss_fn)
            ok, obj = _score(model, cand, y, targeted, loss_fn)
            better = (ok & ~best_ok) | ((ok == best_ok) & (obj > best_obj))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), cand, best)
            best_ok = best_ok | ok
            best_obj = torch.where(better, obj, best_obj)
    return best


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    targeted: bool = False,
    loss_fn: Optional[LossFn] = None,
) -> torch.Tensor:
    """FGSM (Goodfellow et al., 2015): one Linf sign step of size ``eps`` from ``x``, no random
    start, clamped to [0, 1]. ``eps == 0`` returns ``x.clone()``."""
    return pgd(
        model, x, y, norm="linf", eps=eps, steps=1, step_size=eps,
        random_start=False, targeted=targeted, loss_fn=loss_fn,
    )


def mifgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 7,
    decay: float = 1.0,
    *,
    targeted: bool = False,
    loss_fn: Optional[LossFn] = None,
) -> torch.Tensor:
    """MI-FGSM (Dong et al., 2018): Linf, no random start, ``steps`` steps of size
    ``eps / steps``, momentum ``decay`` on the L1-normalised gradient.

    Matches torchattacks' ``MIFGSM(eps, alpha=eps/steps, steps, decay)`` (torchattacks divides by
    the mean |grad| instead of the L1 norm, a per-sample constant factor that does not change the
    sign step).
    """
    return pgd(
        model, x, y, norm="linf", eps=eps, steps=steps,
        step_size=(eps / steps) if steps > 0 else 0.0,
        random_start=False, momentum=decay, targeted=targeted, loss_fn=loss_fn,
    )


@dataclass
class PGDAttack:
    """A configured PGD attack: ``PGDAttack(norm="l2", eps=0.5, steps=7)(model, x, y)``.

    Fields mirror :func:`pgd`; ``step_size=None`` means the default ``2.5 * eps / steps``.
    :meth:`describe` gives a flat dict (with the resolved step size) for results files.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 7
    step_size: Optional[float] = None
    random_start: bool = True
    restarts: int = 1
    momentum: float = 0.0
    targeted: bool = False

    def __post_init__(self) -> None:
        self.norm = get_step_class(self.norm).norm  # canonical lower-case name, validated

    @property
    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return default_step_size(self.norm, self.eps, self.steps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(
            model, x, y, norm=self.norm, eps=self.eps, steps=self.steps,
            step_size=self.step_size, random_start=self.random_start,
            restarts=self.restarts, momentum=self.momentum, targeted=self.targeted,
        )

    def describe(self) -> dict:
        d = asdict(self)
        d["step_size"] = self.resolved_step_size
        d["attack"] = "pgd"
        return d
