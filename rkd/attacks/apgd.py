"""Auto-PGD (APGD-CE, APGD-DLR, APGD-T) of Croce & Hein (2020), written for speed on CPU.

Reference: F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690), Algorithm 1 and Sec. 3-4; the
authors' code is github.com/fra31/auto-attack. AutoAttack's reference set uses APGD-CE and
APGD-T (9 target classes) with 100 iterations each.

Algorithm (one run, per sample; ``f`` is the loss to maximise, ``P`` the projection onto the
``eps`` ball around ``x`` intersected with [0, 1]):

* start ``x0`` on the sphere of the ball: ``x + eps * t / ||t||`` with ``t ~ U(-1, 1)^d`` (Linf,
  ``||t||_inf``) or ``t ~ N(0, I)`` (L2), clamped to [0, 1]; step size ``eta = 2 * eps``;
* step ``k`` (momentum ``alpha = 0.75``, ``alpha = 1`` for the first step)::

      z      = P(x_k + eta * s(grad f(x_k)))        s = sign (Linf) or g / ||g||_2 (L2)
      x_k+1  = P(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_k-1))

* checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0, p_1 = 0.22``,
  ``p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06)`` (for 100 steps: 22, 41, 57, 70, 80, 87, 93,
  99); at each checkpoint ``eta`` is halved and the iterate reset to the best point ``x_max``
  (with its gradient) if

  1. the loss increased in at most a fraction ``rho`` of the steps since the last checkpoint
     (``#{f(x_i+1) > f(x_i)} <= rho * (w_j - w_j-1)``; the paper writes ``<``, the authors' code
     ``<=``, which is followed here -- the two differ only when ``rho * window`` is an integer),
     or
  2. ``eta`` was not halved at the last checkpoint and the best loss has not improved since;
     (at the first checkpoint only condition 1 applies, as in the authors' code).

Losses: cross-entropy; DLR ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (``z_pi`` the
logits sorted in decreasing order); targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 +
1e-12)``. DLR is invariant to shifting and (up to the 1e-12) scaling the logits, so a saturated
softmax -- where cross-entropy gradients underflow to zero -- does not mask it.

APGD-T (``targets = k > 0``): for each of the ``k`` most likely wrong classes at the clean point
in turn (at most ``n_classes - 1``), a targeted-DLR run on the points not yet fooled. ``restarts``
runs each variant again from new random starts on the still-robust points only.

Speed: only the points that are correctly classified at the clean input are attacked, and a
point leaves the working batch at the first iterate that is misclassified (that iterate is its
result). Points never fooled get their highest-loss iterate (across runs: the highest loss of
the run, for APGD-T the highest untargeted DLR of each run's best point).

Conventions of :mod:`rkd.attacks`: ``x`` in [0, 1] (eps in pixel units); the result is
detached, inside the ball and [0, 1]; the model's train/eval mode is not touched; gradients
w.r.t. the input only (:func:`torch.autograd.grad`, parameter ``.grad`` untouched); works under
``torch.no_grad()``; the random starts come from the CPU generator seeded with ``seed`` inside
:func:`torch.random.fork_rng` (CPU and the CUDA device of ``x``), so results are reproducible
and independent of the device, and the caller's RNG stream is not disturbed.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rng import forked_rng
from .steps import AttackStep, get_step_class

__all__ = ["apgd", "dlr_loss", "targeted_dlr_loss", "top_wrong_classes", "checkpoints"]

#: momentum of the APGD update (the paper's alpha)
MOMENTUM = 0.75
#: the step-size schedule's constants in hundredths of the iteration budget (p_1, decrement, min)
_P1, _P_DECR, _P_MIN = 22, 3, 6
_DEN_EPS = 1e-12


# --------------------------------------------------------------------------------------- losses
def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss per sample: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)``."""
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + _DEN_EPS)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per sample: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``."""
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + _DEN_EPS)


def _per_sample_loss(loss: str, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """The run's loss per sample: targeted DLR if ``target`` is given, else CE or DLR."""
    if target is not None:
        return targeted_dlr_loss(logits, y, target)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return dlr_loss(logits, y)


# ------------------------------------------------------------------------------ building blocks
def top_wrong_classes(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` classes other than ``y`` with the largest logits, most likely first: ``(N, k)``."""
    masked = logits.scatter(1, y[:, None], float("-inf"))
    return masked.topk(k, dim=1).indices


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which the step size may be halved.

    ``p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06)``, computed exactly in
    hundredths; repeated marks (few steps) are merged. ``checkpoints(100)`` is
    ``[22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    marks: list[int] = []
    p_prev, p = 0, _P1
    while True:
        w = -(-p * steps // 100)  # ceil in integers
        if w > steps or w < 1:
            break
        if not marks or w > marks[-1]:
            marks.append(w)
        p_prev, p = p, p + max(p - p_prev - _P_DECR, _P_MIN)
    return marks


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, ..., 1)`` broadcastable against ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def _per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return _view(flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1), t)


def _random_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """A random point on the sphere of the ball (drawn on the CPU generator), clamped to [0, 1]."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, dtype=x.dtype)
    t = t.to(x.device)
    return (x + eps * t / (_per_sample_norm(t, norm) + _DEN_EPS)).clamp(0.0, 1.0)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: ``sign(g)`` (Linf) or ``g / ||g||_2`` (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / (_per_sample_norm(grad, "l2") + _DEN_EPS)


def _momentum_step(x_cur, x_prev, grad, eta, alpha, x, norm, ball: AttackStep) -> torch.Tensor:
    """``z = P(x_k + eta s(g))``; ``x_k+1 = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_k-1))``."""
    z = ball.project(x_cur + _view(eta, x) * _direction(grad, norm), x)
    return ball.project(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev), x)


def _loss_and_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                   loss: str):
    """(per-sample loss, its gradient w.r.t. ``x_adv``, logits), all detached."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    loss = _per_sample_loss(loss, logits, y, target)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach(), logits.detach()


# ------------------------------------------------------------------------------------- one run
class _RunState:
    """The working batch of one APGD run: per-sample tensors that shrink as points are fooled."""

    FIELDS = ("pos", "x", "y", "target", "x_cur", "x_prev", "grad", "x_best", "grad_best", "loss_best",
              "loss_prev", "eta", "n_incr", "loss_best_check", "reduced_check")

    def __init__(self, **tensors):
        for name in self.FIELDS:
            setattr(self, name, tensors.get(name))

    def keep(self, mask: torch.Tensor) -> None:
        for name in self.FIELDS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[mask])


def _drop_fooled(s: _RunState, logits: torch.Tensor, out: torch.Tensor, fooled: torch.Tensor) -> None:
    """Store the current iterate of each newly misclassified point and drop it from the batch."""
    hit = logits.argmax(dim=1) != s.y
    if hit.any():
        out[s.pos[hit]] = s.x_cur[hit]
        fooled[s.pos[hit]] = True
        s.keep(~hit)


def _checkpoint(s: _RunState, window: int, rho: float) -> None:
    """Halve the step size (and restart from the best point) where either condition holds."""
    cond1 = s.n_incr <= rho * window
    cond2 = ~s.reduced_check & (s.loss_best <= s.loss_best_check)
    reduce = cond1 | cond2
    s.eta = torch.where(reduce, s.eta / 2, s.eta)
    r = _view(reduce, s.x)
    s.x_cur = torch.where(r, s.x_best, s.x_cur)
    s.grad = torch.where(r, s.grad_best, s.grad)
    s.loss_prev = torch.where(reduce, s.loss_best, s.loss_prev)
    s.reduced_check = reduce
    s.loss_best_check = s.loss_best.clone()
    s.n_incr = torch.zeros_like(s.n_incr)


def _apgd_run(model, x, y, target, *, norm, eps, steps, loss, rho):
    """One APGD run from a random start. Returns ``(x_out, fooled, best_loss)``: per sample the
    first misclassified iterate (``fooled``) or else the highest-loss iterate and its loss."""
    ball = get_step_class(norm)(eps, 0.0)
    n = x.shape[0]
    out = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_loss = torch.full((n,), float("-inf"), device=x.device)

    x_cur = _random_start(x, norm, eps)
    loss_cur, grad, logits = _loss_and_grad(model, x_cur, y, target, loss)
    s = _RunState(pos=torch.arange(n, device=x.device), x=x, y=y, target=target, x_cur=x_cur, x_prev=x_cur,
                  grad=grad, x_best=x_cur, grad_best=grad, loss_best=loss_cur, loss_prev=loss_cur,
                  eta=torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device),
                  n_incr=torch.zeros(n, device=x.device), loss_best_check=loss_cur,
                  reduced_check=torch.ones(n, dtype=torch.bool, device=x.device))
    _drop_fooled(s, logits, out, fooled)
    marks, last_mark = set(checkpoints(steps)), 0
    for k in range(steps):
        if s.pos.numel() == 0:
            break
        alpha = 1.0 if k == 0 else MOMENTUM
        x_new = _momentum_step(s.x_cur, s.x_prev, s.grad, s.eta, alpha, s.x, norm, ball)
        s.x_prev, s.x_cur = s.x_cur, x_new
        loss_cur, s.grad, logits = _loss_and_grad(model, s.x_cur, s.y, s.target, loss)
        s.n_incr = s.n_incr + (loss_cur > s.loss_prev).to(s.n_incr.dtype)
        s.loss_prev = loss_cur
        better = loss_cur > s.loss_best
        b = _view(better, s.x)
        s.x_best = torch.where(b, s.x_cur, s.x_best)
        s.grad_best = torch.where(b, s.grad, s.grad_best)
        s.loss_best = torch.where(better, loss_cur, s.loss_best)
        _drop_fooled(s, logits, out, fooled)
        if k + 1 in marks and s.pos.numel() > 0:
            _checkpoint(s, k + 1 - last_mark, rho)
            last_mark = k + 1
    out[s.pos] = s.x_best
    best_loss[s.pos] = s.loss_best
    return out, fooled, best_loss


# ------------------------------------------------------------------------------------ the attack
def _validate(norm, eps, steps, restarts, loss, targets, rho) -> str:
    norm = get_step_class(norm).norm
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
    if targets < 0:
        raise ValueError(f"targets must be >= 0, got {targets}")
    if targets > 0 and loss != "dlr":
        raise ValueError("a targeted APGD (targets > 0) uses the targeted DLR loss; pass loss='dlr'")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return norm


def _check_classes(n_classes: int, loss: str, targets: int) -> None:
    need = 4 if targets > 0 else (3 if loss == "dlr" else 2)
    if n_classes < need:
        raise ValueError(f"{'targeted DLR' if targets else loss.upper()} needs >= {need} classes, got {n_classes}")


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    targets: int = 0,
    rho: float = 0.75,
    seed: int = 0,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein, 2020): APGD-CE, APGD-DLR, or APGD-T with ``targets`` classes.

    Args:
        model: ``nn.Module`` mapping ``x`` in [0, 1] to logits; its mode is not changed.
        x: clean inputs ``(N, C, H, W)`` in [0, 1]; y: labels ``(N,)``.
        norm: ``"linf"`` or ``"l2"``; eps: radius in pixel units (``eps == 0`` or
            ``steps == 0`` returns ``x.clone()``).
        steps: iterations per run (AutoAttack: 100).
        restarts: runs per variant; runs after the first attack only the still-robust points,
            from new random starts.
        loss: ``"ce"`` or ``"dlr"`` (untargeted); must be ``"dlr"`` when ``targets > 0``.
        targets: 0 = untargeted; ``k > 0`` = APGD-T against each of the ``k`` most likely
            wrong classes at the clean point in turn (capped at ``n_classes - 1``; AutoAttack: 9).
        rho: threshold of the step-size condition 1 (0.75).
        seed: seed of the random starts (reproducible; the caller's RNG is untouched).

    Returns:
        ``x_adv`` detached, same shape/dtype/device as ``x``: per sample the first
        misclassified iterate found, else the highest-loss iterate; points misclassified at the
        clean input are returned unchanged.
    """
    norm = _validate(norm, eps, steps, restarts, loss, targets, rho)
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    y = y.detach().to(x.device)
    with forked_rng(x, seed), torch.enable_grad():
        with torch.no_grad():
            logits = model(x)
        _check_classes(logits.shape[1], loss, targets)
        robust = logits.argmax(dim=1) == y
        x_adv = x.clone()
        score = torch.full((x.shape[0],), float("-inf"), device=x.device)
        n_targets = min(targets, logits.shape[1] - 1)
        wrong = top_wrong_classes(logits, y, n_targets) if n_targets else None
        for rank in range(max(n_targets, 1)):
            for _ in range(restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return x_adv
                target = wrong[idx, rank] if wrong is not None else None
                out, fooled, run_loss = _apgd_run(model, x[idx], y[idx], target, norm=norm, eps=eps,
                                                  steps=steps, loss=loss, rho=rho)
                if target is not None:  # targeted losses of different targets do not compare
                    with torch.no_grad():
                        run_loss = dlr_loss(model(out), y[idx])
                keep = fooled | (run_loss > score[idx])
                x_adv[idx[keep]] = out[keep]
                score[idx[keep]] = torch.where(fooled[keep], float("inf"), run_loss[keep])
                robust[idx[fooled]] = False
    return x_adv
