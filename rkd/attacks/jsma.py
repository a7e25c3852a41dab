"""Jacobian-based Saliency Map Attack (Papernot et al., "The Limitations of Deep Learning in
Adversarial Settings", EuroS&P 2016), the attack used to evaluate defensive distillation.

Targeted, L0-style: greedily pick *pairs* of input features whose joint change most increases
the target logit while decreasing the others, change them by ``theta``, repeat until the model
predicts the target or the distortion budget ``gamma`` is spent.

Conventions
-----------
* Every scalar of the input (each channel of each pixel: ``C*H*W`` features) is one feature,
  as in cleverhans' implementation for colour images.
* Saliency uses the forward derivative of the **logits** ``Z`` by default
  (``alpha = dZ_t/dx``, ``beta = sum_{j != t} dZ_j/dx``), as in Carlini & Wagner's
  re-evaluation of defensive distillation; ``use_logits=False`` uses the softmax probabilities
  like the 2016 papers, whose vanishing gradients (at T = 1 after distillation) are what makes
  the defence look strong. Report both when evaluating distillation.
* Pair saliency for ``theta > 0`` (increase features): among pairs ``p != q`` in the search
  domain with ``alpha_p + alpha_q > 0`` and ``beta_p + beta_q < 0``, choose the one maximising
  ``(alpha_p + alpha_q) * |beta_p + beta_q|``. For ``theta < 0`` the sign conditions flip.
  Both chosen features are changed by ``theta`` (clipped to ``[clip_min, clip_max]``) and
  removed from the search domain (Algorithm 3 of the paper). The initial search domain is the
  features that can still move in the direction of ``theta`` (``x < clip_max`` for ``theta > 0``).
* Stop per sample when: the prediction is the target (success); ``floor(gamma * n / 2)``
  iterations are done (so at most ``gamma * n`` features change); fewer than two features are
  left in the domain; or no pair satisfies the sign conditions (failure, as no saliency-map
  pair exists -- implementations that pick an arbitrary pair then are not followed).
* The pair search is exact but not quadratic in practice: a branch and bound over rows of the
  ``n x n`` pair matrix (see :func:`_saliency_pairs`) usually scans a few hundred rows, so
  3x32x32 inputs (n = 3072) take milliseconds per iteration and ``row_chunk * n`` memory.
* The model's train/eval mode is not changed (use eval mode: in train mode BatchNorm couples
  the samples of a batch); parameter ``.grad`` is untouched (``torch.autograd.grad``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

__all__ = ["jsma", "jsma_success_rate"]


def _saliency_pairs(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    domain: torch.Tensor,
    row_chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best feature pair per sample (see :func:`_branch_and_bound_pairs` for the score): exact.

    With ``x = alpha``, ``y = -beta`` a positive score ``(x_p + x_q)(y_p + y_q)`` grows with
    ``x`` and ``y`` of either feature, so in the best pair ``(p, q)`` no feature but ``q``
    dominates ``p`` (``x >= x_p`` and ``y >= y_p``, one strictly), and the same for ``q``: both
    lie in the first two Pareto layers of the points ``(x, y)`` (a feature dominated only by
    ``q`` is on the frontier once the first layer, ``q`` in it, is removed). The pairs among
    those candidates -- a few dozen of the ``n`` features as a rule -- are scored exhaustively;
    samples with more than ``_MAX_CANDIDATES`` candidates (points strung along a falling line)
    go to the branch and bound.
    """
    bsz, n = alpha.shape
    dev = alpha.device
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=dev)
    x = torch.where(domain, alpha.double(), neg_inf)  # (B, n)
    y = torch.where(domain, -beta.double(), neg_inf)  # (B, n)
    first = _pareto_layer(x, y, domain)
    cand = first | _pareto_layer(x, y, domain & ~first)  # (B, n)
    count = cand.sum(dim=1)
    p = torch.zeros(bsz, dtype=torch.long, device=dev)
    q, found = torch.zeros_like(p), torch.zeros(bsz, dtype=torch.bool, device=dev)
    small = count <= _MAX_CANDIDATES
    if bool(small.any()):
        rows = small.nonzero().squeeze(1)
        p[rows], q[rows], found[rows] = _exhaustive_pairs(x[rows], y[rows], cand[rows], int(count[rows].max()))
    if not bool(small.all()):
        rows = (~small).nonzero().squeeze(1)
        p[rows], q[rows], found[rows] = _branch_and_bound_pairs(alpha[rows], beta[rows], domain[rows], row_chunk)
    return p, q, found


#: candidate features per sample up to which their pairs are scored exhaustively
_MAX_CANDIDATES = 512


def _pareto_layer(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` bool: the points of ``mask`` that no other point of ``mask`` beats in ``y``
    among those at least as far in ``x`` (sorted by ``x``, then ``y``, descending) -- the Pareto
    frontier, plus points tied with it (a superset is harmless: the candidates are scored)."""
    neg_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
    xm, ym = torch.where(mask, x, neg_inf), torch.where(mask, y, neg_inf)
    by_y = ym.argsort(dim=1, descending=True, stable=True)
    order = by_y.gather(1, xm.gather(1, by_y).argsort(dim=1, descending=True, stable=True))
    ys = ym.gather(1, order)
    before = torch.cat([torch.full_like(ys[:, :1], -math.inf), ys.cummax(dim=1).values[:, :-1]], dim=1)
    on = (ys >= before) & mask.gather(1, order)
    return torch.zeros_like(mask).scatter(1, order, on)


def _exhaustive_pairs(x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor, m: int):
    """The best pair among the ``cand`` features of each sample, at most ``m`` per sample; of
    pairs with equal scores, the one with the smallest first feature index, then second."""
    b, n = x.shape
    order = torch.arange(n, device=x.device).expand(b, n)
    idx = torch.where(cand, order, order + n).argsort(dim=1)[:, :m]  # (b, m): candidates, ascending
    ok = cand.gather(1, idx)
    xc = torch.where(ok, x.gather(1, idx), -math.inf)
    yc = torch.where(ok, y.gather(1, idx), -math.inf)
    # padding is -inf, so any pair with it clamps to a score of 0
    S = (xc[:, :, None] + xc[:, None, :]).clamp_min(0) * (yc[:, :, None] + yc[:, None, :]).clamp_min(0)
    S.diagonal(dim1=1, dim2=2).zero_()  # p == q is not a pair
    v, flat = S.flatten(1).max(dim=1)
    i, j = flat // m, flat % m
    rows = torch.arange(b, device=x.device)
    pi, qj = idx[rows, i], idx[rows, j]
    return torch.minimum(pi, qj), torch.maximum(pi, qj), v > 0


def _branch_and_bound_pairs(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    domain: torch.Tensor,
    row_chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best feature pair per sample: exact, by branch and bound over rows of the pair matrix.

    Score of a pair ``p != q``: ``S = max(A, 0) * max(N, 0)`` with ``A = alpha_p + alpha_q`` and
    ``N = -(beta_p + beta_q)``; ``S > 0`` exactly for the admissible pairs (``A > 0``,
    ``beta_p + beta_q < 0``) and then equals ``A * |B|``. Features outside the domain get
    ``alpha = -beta = -inf`` so they never score.

    Every pair in row ``p`` (all ``q``) is bounded by ``UB_p = min(U1_p, U2_p)`` with

    * ``U1_p = max(alpha_p + max alpha, 0) * max(-beta_p + max(-beta), 0)``, and
    * ``U2_p = max((c_p + max c) / 2, 0)^2 / lam`` with ``c = lam * alpha - beta``, from
      AM-GM ``A * N = (lam A)(N) / lam <= ((lam A + N) / 2)^2 / lam`` (valid for any
      ``lam > 0``; tight near the pair whose ratio ``N / A`` is ``lam``, so ``lam`` is taken
      from the best pair found so far).

    Rows are scanned ``row_chunk`` at a time in decreasing bound order until no unscanned
    row's bound beats the best score. Any unscanned pair has both rows unscanned, so the result
    equals a full ``n x n`` search (ties aside), usually after one or two chunks instead of
    ``n / row_chunk``. Every sample of the batch is searched at once (a sample leaves the search
    when its bound is reached); memory ``row_chunk * n`` scores per sample, at most
    ``_PAIR_SCORES`` at once. The search runs in float64 so
    products of tiny gradients (softmax saliency of a distilled network) do not underflow.

    Args:
        alpha, beta: ``(B, n)`` forward derivatives, already multiplied by ``sign(theta)`` so the
            admissible pairs are always ``A > 0, B < 0``.
        domain: ``(B, n)`` bool search domain.
        row_chunk: rows of the pair matrix materialised at once.

    Returns:
        ``(p, q, found)``: ``(B,)`` long indices with ``p < q``, and ``(B,)`` bool "an
        admissible pair exists" (``p, q`` are meaningless where it is False).
    """
    bsz, n = alpha.shape
    dev = alpha.device
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=dev)
    a = torch.where(domain, alpha.double(), neg_inf)  # (B, n)
    nb = torch.where(domain, -beta.double(), neg_inf)  # (B, n)
    u1 = (a + a.amax(1, keepdim=True)).clamp_min(0) * (nb + nb.amax(1, keepdim=True)).clamp_min(0)  # row bounds
    open_rows = torch.ones(bsz, n, dtype=torch.bool, device=dev)
    best = torch.zeros(bsz, dtype=torch.float64, device=dev)  # best score so far, per sample
    best_a, best_nb = torch.ones_like(best), torch.ones_like(best)  # its A and N (the AM-GM ratio)
    p_out = torch.zeros(bsz, dtype=torch.long, device=dev)
    q_out = torch.zeros(bsz, dtype=torch.long, device=dev)
    searching = torch.ones(bsz, dtype=torch.bool, device=dev)
    k = min(16, row_chunk, n)  # rows per sample per round, growing geometrically up to row_chunk
    while True:
        ub = u1
        if bool((best > 0).any()):  # tighten with the AM-GM bound around the current best ratio
            lam = (best_nb / best_a)[:, None]
            c = lam * a + nb
            u2 = ((c + c.amax(1, keepdim=True)) / 2).clamp_min(0).square() / lam
            ub = torch.where((best > 0)[:, None], torch.minimum(u1, u2), u1)
        top_ub, rows = torch.where(open_rows, ub, neg_inf).topk(k, dim=1)  # (B, k), descending
        keep = top_ub > best[:, None]  # rows that may still hold a better pair
        searching &= keep[:, 0]
        if not bool(searching.any()):
            break
        for idx in searching.nonzero().squeeze(1).split(max(1, _PAIR_SCORES // (k * n))):
            _scan_rows(idx, rows[idx], keep[idx], a, nb, open_rows, best, best_a, best_nb, p_out, q_out)
        k = min(2 * k, row_chunk, n)
    p, q = torch.minimum(p_out, q_out), torch.maximum(p_out, q_out)
    return p, q, best > 0


#: pair scores (float64) materialised at once by the batched pair search: 128 MB
_PAIR_SCORES = 1 << 24


def _scan_rows(idx, rows, keep, a, nb, open_rows, best, best_a, best_nb, p_out, q_out) -> None:
    """Score every pair in the kept ``rows`` (b, k) of samples ``idx`` (b,); close those rows and
    record, in place, any pair better than the sample's best so far."""
    b, k = rows.shape
    n = a.shape[1]
    open_rows[idx[:, None].expand(b, k)[keep], rows[keep]] = False
    a_i, nb_i = a[idx], nb[idx]  # (b, n)
    A = a_i.gather(1, rows)[:, :, None] + a_i[:, None, :]  # (b, k, n)
    N = nb_i.gather(1, rows)[:, :, None] + nb_i[:, None, :]  # (b, k, n)
    S = A.clamp_min(0) * N.clamp_min(0)
    S[~keep] = 0  # rows whose bound cannot beat the best
    S.scatter_(2, rows[:, :, None], 0.0)  # p == q is not a pair
    v, flat = S.flatten(1).max(dim=1)  # (b,)
    better = v > best[idx]
    if not bool(better.any()):
        return
    r, q = flat // n, flat % n
    sel, r, q = idx[better], r[better], q[better]
    j = better.nonzero().squeeze(1)
    best[sel], p_out[sel], q_out[sel] = v[better], rows[j, r], q
    best_a[sel], best_nb[sel] = A[j, r, q], N[j, r, q]


def jsma(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    theta: float = 1.0,
    gamma: float = 0.145,
    batch_chunk: int = 16,
    *,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    use_logits: bool = True,
    row_chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targeted JSMA, pairwise-feature version (Papernot et al., 2016).

    Args:
        model: ``nn.Module`` mapping ``x`` in [0, 1] to logits; its mode is not changed (call it
            in eval mode).
        x: clean inputs ``(N, ...)`` in ``[clip_min, clip_max]``.
        target: target classes ``(N,)``.
        theta: change applied to each chosen feature; ``+1`` (default) sets features to the max.
        gamma: maximum fraction of features changed (default 0.145, Papernot et al.'s 14.5%,
            as in the config's ``eval.jsma.gamma``); the attack runs at most
            ``floor(gamma * n_features / 2)`` iterations.
        batch_chunk: number of samples whose forward/backward passes are batched together
            (the pair search itself runs per sample).
        clip_min, clip_max: feature range.
        use_logits: saliency on logits (default) or on softmax probabilities.
        row_chunk: rows of the ``n x n`` pair-score matrix materialised at once per sample in
            the (exact, branch-and-bound) pair search: memory ``row_chunk * n`` float64.

    Returns:
        ``(x_adv, success, n_changed)``: adversarial inputs (detached, same dtype/device as
        ``x``), ``(N,)`` bool "model predicts ``target`` on ``x_adv``", and ``(N,)`` long number
        of features that differ from ``x``.
    """
    if theta == 0:
        raise ValueError("theta must be non-zero")
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    x = x.detach()
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    if target.shape[0] != x.shape[0]:
        raise ValueError("target must have one entry per sample")
    outs = [
        _jsma_batch(model, x[i:i + batch_chunk], target[i:i + batch_chunk], theta, gamma,
                    clip_min, clip_max, use_logits, row_chunk)
        for i in range(0, x.shape[0], max(1, batch_chunk))
    ]
    x_adv = torch.cat(outs) if outs else x.clone()
    with torch.no_grad():
        success = model(x_adv).argmax(dim=1) == target
    n_changed = (x_adv != x).flatten(1).sum(dim=1)
    return x_adv, success, n_changed


def _jsma_batch(model, x, target, theta, gamma, clip_min, clip_max, use_logits, row_chunk):
    """JSMA on one chunk of samples; returns the adversarial chunk (detached)."""
    shape = x.shape
    n = x[0].numel()
    max_iters = int(math.floor(gamma * n / 2))  # two features per iteration
    sgn = 1.0 if theta > 0 else -1.0
    x_flat = x.flatten(1).clone()  # (B, n)
    domain = x_flat < clip_max if theta > 0 else x_flat > clip_min  # (B, n) features that can move
    active = torch.ones(shape[0], dtype=torch.bool, device=x.device)

    for _ in range(max_iters):
        idx = active.nonzero().squeeze(1)  # (b,) samples still being attacked
        if idx.numel() == 0:
            break
        b = idx.numel()
        t = target[idx]
        # One forward/backward on two copies of the batch: copy 1 back-propagates Z_t, copy 2
        # sum_j Z_j (samples are independent in eval mode), giving both Jacobian rows at once.
        xa = x_flat[idx].repeat(2, 1).requires_grad_(True)  # (2b, n)
        with torch.enable_grad():
            out = model(xa.view(-1, *shape[1:]))  # (2b, K)
            if not use_logits:
                out = out.softmax(dim=1)
            w = torch.ones_like(out)
            w[:b] = 0
            w[torch.arange(b, device=x.device), t] = 1
            (g,) = torch.autograd.grad((out * w.detach()).sum(), xa)
        g_t, g_all = g[:b], g[b:]  # dZ_t/dx, sum_j dZ_j/dx: (b, n) each
        dom = domain[idx]
        done = (out[:b].detach().argmax(dim=1) == t) | (dom.sum(dim=1) < 2)
        go = ~done
        if go.any():
            alpha = sgn * g_t[go]  # (b', n)
            beta = sgn * (g_all[go] - g_t[go])  # (b', n): sum over j != t
            p, q, found = _saliency_pairs(alpha, beta, dom[go], row_chunk)
            sel = idx[go]
            done[go] = ~found
            sel, p, q = sel[found], p[found], q[found]
            for f in (p, q):
                x_flat[sel, f] = (x_flat[sel, f] + theta).clamp(clip_min, clip_max)
                domain[sel, f] = False
        active[idx[done]] = False
    return x_flat.view(shape).detach()


def jsma_success_rate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    targets: Literal["random", "all"] = "random",
    seed: int = 0,
    *,
    return_details: bool = False,
    **jsma_kwargs,
):
    """Success rate of targeted JSMA over (sample, target != y) pairs.

    Args:
        model, x, y: model (eval mode), clean inputs and true labels ``(N,)``.
        num_classes: number of classes K.
        targets: ``"random"``: one target per sample drawn uniformly from the K-1 wrong classes
            with a CPU ``torch.Generator`` seeded by ``seed``; ``"all"``: every wrong class for
            every sample (``N*(K-1)`` attacks, as in Papernot et al.).
        seed: seed for the random targets.
        return_details: also return a dict with per-pair ``target``, ``success``, ``n_changed``,
            ``sample_index`` and the mean fraction of changed features over successful pairs.
        **jsma_kwargs: passed to :func:`jsma` (``theta``, ``gamma``, ``batch_chunk``...).

    Returns:
        The success rate in [0, 1] (float), or ``(rate, details)``.

    All given samples are attacked, misclassified ones included; filter beforehand to report the
    rate over correctly classified samples only.
    """
    y = torch.as_tensor(y, device=x.device).long().view(-1)
    n = x.shape[0]
    if targets == "random":
        gen = torch.Generator().manual_seed(int(seed))
        offs = torch.randint(1, num_classes, (n,), generator=gen).to(x.device)
        tgt = (y + offs) % num_classes  # uniform over the K-1 classes != y
        sample_index = torch.arange(n, device=x.device)
    elif targets == "all":
        offs = torch.arange(1, num_classes, device=x.device)
        tgt = ((y[:, None] + offs[None, :]) % num_classes).reshape(-1)
        sample_index = torch.arange(n, device=x.device).repeat_interleave(num_classes - 1)
    else:
        raise ValueError(f"targets must be 'random' or 'all', got {targets!r}")
    x_rep = x[sample_index]
    if x_rep.shape[0] == 0:
        rate = float("nan")
        return (rate, {}) if return_details else rate
    _, success, n_changed = jsma(model, x_rep, tgt, **jsma_kwargs)
    rate = success.float().mean().item()
    if not return_details:
        return rate
    n_feat = x[0].numel()
    frac = (n_changed[success].float() / n_feat).mean().item() if success.any() else float("nan")
    details = {
        "target": tgt.cpu(),
        "success": success.cpu(),
        "n_changed": n_changed.cpu(),
        "sample_index": sample_index.cpu(),
        "mean_changed_fraction_successful": frac,
    }
    return rate, details
