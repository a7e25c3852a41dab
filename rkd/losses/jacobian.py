"""Robust-KD's Jacobian loss, estimated with random projections (Algorithm 1 of the paper,
after Hoffman et al. 2019, "Robust learning with Jacobian regularization").

For a constrained stage ``i`` with output ``f_i(x)`` and a random ``v`` of the shape of one
sample's map with ``||v||_2 = 1`` (per sample), the projected Jacobian is the vector-Jacobian
product ``J_v(x) = d<v, f_i(x)>/dx`` (shape of ``x``). The same ``v`` is used for student and
teacher, and the loss is the squared L2 distance of the two products::

    L_J = sum_i  R_k  mean_n || J_v^S(x_n) - J_v^T(x_n) ||_2^2        (k = 1..n_proj)

``R_k`` is the mean over the ``n_proj`` draws by default (``projections="mean"``) or their sum
(``"sum"``, the paper's text). The paper's Table 7 (n_proj 1/5/10 at one gamma) gives nearly
identical clean accuracies, which a 10x stronger regulariser (sum) would not, so the mean is
the default; both are the same estimator up to the constant n_proj.

Costs and gradients: the teacher's product is computed without a graph (the teacher is a fixed
target, nothing flows back into it); the student's is computed with ``create_graph=True`` so
that the loss can be minimised by double back-propagation through the student only.

Two estimators of the same expectation (``estimator``):

``per_stage`` (the paper's Algorithm 1)
    one pair of products per stage and projection: ``n_stages * n_proj`` student backward
    passes, each through the stages up to ``i``.
``joint``
    one pair of products per projection for all stages at once, with independent ``v_i`` per
    stage: ``d<sum_i v_i, f_i>/dx = sum_i J_{v_i}``. Since the ``v_i`` are independent with
    mean zero, the cross terms ``E<a_i, a_j>`` vanish and
    ``E||sum_i (J^S_{v_i} - J^T_{v_i})||^2 = sum_i E||J^S_{v_i} - J^T_{v_i}||^2``: an unbiased
    estimate of the per-stage loss (higher variance) at the cost of one stage.

For a uniformly random unit ``v`` in ``d`` dimensions ``E[v v^T] = I/d``, so the expectation
of one stage's term is ``||J^S - J^T||_F^2 / d`` (per sample): tests check this against the
exact Jacobian.
"""

from __future__ import annotations

from typing import Sequence

import torch

JACOBIAN_ESTIMATORS = ("per_stage", "joint")
PROJECTION_REDUCTIONS = ("mean", "sum")


def random_unit_like(f: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian tensor of ``f``'s shape, scaled so that each sample (dim 0) has unit L2 norm:
    uniformly distributed on the unit sphere of one sample's map."""
    # drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved
    device = generator.device if generator is not None else f.device
    v = torch.randn(f.shape, dtype=f.dtype, device=device, generator=generator).to(f.device)
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (f.dim() - 1)))


def _vjp(outputs: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], x: torch.Tensor,
         create_graph: bool) -> torch.Tensor:
    (g,) = torch.autograd.grad(list(outputs), x, grad_outputs=list(vs), create_graph=create_graph,
                               retain_graph=True)
    return g


def jacobian_projection_loss(x: torch.Tensor, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                             n_proj: int = 1, estimator: str = "per_stage", projections: str = "mean",
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """The Jacobian random-projection loss between student and teacher stage maps.

    Args:
        x: the input batch both networks were run on; must require grad.
        student: the student's maps of the constrained stages, computed from ``x`` with a graph.
        teacher: the teacher's maps of the same stages, computed from ``x`` with a graph to
            ``x`` (its parameters frozen).
        n_proj: number of random projections per stage.
        estimator: ``per_stage`` or ``joint`` (see the module docstring).
        projections: ``mean`` or ``sum`` over the ``n_proj`` draws.
        generator: optional RNG for the projections (default: torch's global RNG).
    """
    if not x.requires_grad:
        raise ValueError("x must require grad: run both networks on x.requires_grad_(True)")
    if len(student) != len(teacher) or not student:
        raise ValueError("need the same, non-zero number of student and teacher maps "
                         f"({len(student)} vs {len(teacher)})")
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"feature maps differ in shape: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    if estimator not in JACOBIAN_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {JACOBIAN_ESTIMATORS}")
    if projections not in PROJECTION_REDUCTIONS:
        raise ValueError(f"unknown projection reduction {projections!r}; choose from {PROJECTION_REDUCTIONS}")

    groups = [[i] for i in range(len(student))] if estimator == "per_stage" else [list(range(len(student)))]
    total = x.new_zeros(())
    for _ in range(n_proj):
        for group in groups:
            vs = [random_unit_like(student[i], generator) for i in group]
            j_t = _vjp([teacher[i] for i in group], vs, x, create_graph=False)
            j_s = _vjp([student[i] for i in group], vs, x, create_graph=True)
            total = total + (j_s - j_t.detach()).pow(2).flatten(1).sum(dim=1).mean()
    return total / n_proj if projections == "mean" else total
