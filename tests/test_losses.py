"""Loss functions: the Jacobian projection loss against exact Jacobians, feature-map
distances, the Shafahi GAP-L2 loss and the temperature-scaled distillation losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rkd.losses.jacobian as jac_mod
from rkd.losses import (
    feature_distance,
    feature_map_loss,
    gap_l2_loss,
    jacobian_projection_loss,
    random_unit_like,
    soft_cross_entropy,
    temperature_cross_entropy,
)

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (which, on a busy
    2-core machine, made the double-backward loops 10-100x slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
X_SHAPE = (2, 3, 3)  # one sample: 2 channels, 3x3 pixels (18 input dimensions)


class StageNet(nn.Module):
    """Two smooth stages, no batchnorm (so each sample's maps depend on that sample only):
    stage 1: tanh(conv 2->3, 3x3, pad 1) -> (3, 3, 3); stage 2: softplus(conv 3->2, 2x2) -> (2, 2, 2).
    Every stage ends in a non-linearity, so every parameter (biases included) moves the Jacobian."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(2, 3, 3, padding=1).to(DT)
        self.c2 = nn.Conv2d(3, 2, 2).to(DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.7)

    def forward(self, x):
        f1 = torch.tanh(self.c1(x))
        f2 = F.softplus(self.c2(f1) * 1.5)
        return [f1, f2]


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *X_SHAPE, generator=g, dtype=DT)


def _exact_jacobians(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per stage: (N, d_i, D) exact Jacobians of one sample's flattened map w.r.t. its input."""
    out = []
    n_stages = len(net(x[:1]))
    for i in range(n_stages):
        per = []
        for n in range(x.shape[0]):
            j = torch.autograd.functional.jacobian(lambda xi: net(xi.unsqueeze(0))[i].flatten(), x[n])
            per.append(j.reshape(j.shape[0], -1))
        out.append(torch.stack(per))
    return out


def _nets_and_maps(n=3):
    student, teacher = StageNet(1), StageNet(2)
    x = _inputs(n).requires_grad_(True)
    return student, teacher, x, student(x), teacher(x)


class _FixedDraws:
    """Replacement for random_unit_like that hands out pre-drawn unit vectors in call order
    (the loss draws for projection k, then stage i: the same order for both estimators)."""

    def __init__(self, shapes, n_proj, seed=123):
        g = torch.Generator().manual_seed(seed)
        self.v = [[random_unit_like(torch.empty(s, dtype=DT), g) for s in shapes] for _ in range(n_proj)]
        self.queue = [v for per_k in self.v for v in per_k]
        self.calls = 0

    def __call__(self, f, generator=None):
        v = self.queue[self.calls]
        assert v.shape == f.shape
        self.calls += 1
        return v


def _exact_terms(J_s, J_t, vs, estimator):
    """Per-draw exact values of the loss term from the exact Jacobians and the known v's."""
    terms = []
    for per_k in vs:
        products = [torch.einsum("ndD,nd->nD", js - jt, v.flatten(1)) for js, jt, v in zip(J_s, J_t, per_k)]
        if estimator == "per_stage":
            terms.append(sum(p.pow(2).sum(1).mean() for p in products))
        else:
            terms.append(sum(products).pow(2).sum(1).mean())
    return torch.stack(terms)


@pytest.mark.parametrize("estimator", ["per_stage", "joint"])
def test_jacobian_loss_matches_exact_jacobian_for_known_projections(monkeypatch, estimator):
    """With the projections v fixed, the loss is exactly sum_i mean_n ||(J_S - J_T)^T v_i||^2
    (per_stage) or mean_n ||sum_i (J_S,i - J_T,i)^T v_i||^2 (joint), per draw; 'mean' averages
    the draws and 'sum' adds them (so sum == n_proj * mean for the same draws)."""
    student, teacher, x, fs, ft = _nets_and_maps()
    J_s, J_t = _exact_jacobians(student, x.detach()), _exact_jacobians(teacher, x.detach())
    n_proj = 3
    results = {}
    for projections in ("mean", "sum"):
        draws = _FixedDraws([f.shape for f in fs], n_proj)
        monkeypatch.setattr(jac_mod, "random_unit_like", draws)
        results[projections] = jacobian_projection_loss(x, fs, ft, n_proj=n_proj, estimator=estimator,
                                                        projections=projections)
        assert draws.calls == n_proj * len(fs)  # one v per stage and projection, both estimators
    terms = _exact_terms(J_s, J_t, draws.v, estimator)
    assert terms.min() > 1e-3  # the check is not vacuous
    assert results["mean"].item() == pytest.approx(terms.mean().item(), rel=1e-6, abs=1e-10)
    assert results["sum"].item() == pytest.approx(terms.sum().item(), rel=1e-6, abs=1e-10)
    assert results["sum"].item() == pytest.approx(n_proj * results["mean"].item(), rel=1e-9)


def test_joint_and_per_stage_differ_by_the_cross_terms(monkeypatch):
    """For the same v's, joint - per_stage is exactly the cross term 2<a_1, a_2> of the stage
    products (the terms whose expectation vanishes): the two estimators are not the same number."""
    student, teacher, x, fs, ft = _nets_and_maps()
    J_s, J_t = _exact_jacobians(student, x.detach()), _exact_jacobians(teacher, x.detach())
    out = {}
    for est in ("per_stage", "joint"):
        draws = _FixedDraws([f.shape for f in fs], 1, seed=7)
        monkeypatch.setattr(jac_mod, "random_unit_like", draws)
        out[est] = jacobian_projection_loss(x, fs, ft, estimator=est).item()
    a = [torch.einsum("ndD,nd->nD", js - jt, v.flatten(1)) for js, jt, v in zip(J_s, J_t, draws.v[0])]
    cross = 2 * (a[0] * a[1]).sum(1).mean().item()
    assert abs(cross) > 1e-4
    assert out["joint"] - out["per_stage"] == pytest.approx(cross, rel=1e-6)


def test_jacobian_loss_is_reproducible_with_the_seed_or_generator():
    """The v's come from torch's global RNG (or the given generator): the same seed gives the
    same loss, another seed another one."""
    _, _, x, fs, ft = _nets_and_maps()
    torch.manual_seed(5)
    a = jacobian_projection_loss(x, fs, ft, n_proj=2).item()
    torch.manual_seed(5)
    b = jacobian_projection_loss(x, fs, ft, n_proj=2).item()
    c = jacobian_projection_loss(x, fs, ft, n_proj=2, generator=torch.Generator().manual_seed(5)).item()
    d = jacobian_projection_loss(x, fs, ft, n_proj=2, generator=torch.Generator().manual_seed(6)).item()
    assert a == b == c  # same RNG stream -> same draws
    assert d != a


def test_random_unit_like_has_unit_norm_per_sample():
    """Each sample's v lies on the unit sphere of one sample's map (the E[vv^T] = I/d claim needs it)."""
    v = random_unit_like(torch.empty(4, 3, 2, 2, dtype=DT), torch.Generator().manual_seed(0))
    assert v.shape == (4, 3, 2, 2) and v.dtype == DT
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(4, dtype=DT))


@pytest.mark.parametrize("estimator", ["per_stage", "joint"])
def test_jacobian_loss_is_unbiased_for_frobenius_distance(estimator):
    """Module docstring claim: E[loss] = sum_i mean_n ||J_S,i - J_T,i||_F^2 / d_i (d_i = size of
    one sample's map of stage i), for both estimators. With many draws the Monte-Carlo mean lands
    within a few percent of the exact value (seeded, so deterministic). A wrong normalisation of v
    (e.g. plain Gaussian: factor d_i) or shared/correlated v's would miss by far more."""
    student, teacher, x, fs, ft = _nets_and_maps(n=16)  # 16 samples: each draw averages 16 independent v's
    J_s, J_t = _exact_jacobians(student, x.detach()), _exact_jacobians(teacher, x.detach())
    exact = sum((js - jt).pow(2).sum(dim=(1, 2)).mean() / js.shape[1] for js, jt in zip(J_s, J_t)).item()
    est = jacobian_projection_loss(x, fs, ft, n_proj=1000, estimator=estimator,
                                   generator=torch.Generator().manual_seed(0)).item()
    # one draw has a relative std of ~0.15 here, so 1000 draws have ~0.5%: 3% is 6 standard errors
    assert est == pytest.approx(exact, rel=0.03)


@pytest.mark.parametrize("teacher_requires_grad", [False, True])
def test_jacobian_loss_gradient_reaches_student_only(teacher_requires_grad):
    """Double backprop: every student parameter moves the loss and gets a non-zero gradient;
    the teacher is a fixed target and gets none, even if its parameters require grad (its
    product is computed without a graph and detached)."""
    student, teacher = StageNet(1), StageNet(2)
    for p in teacher.parameters():
        p.requires_grad_(teacher_requires_grad)
    x = _inputs().requires_grad_(True)
    for est in ("per_stage", "joint"):
        student.zero_grad(set_to_none=True)
        loss = jacobian_projection_loss(x, student(x), teacher(x), n_proj=2, estimator=est,
                                        generator=torch.Generator().manual_seed(0))
        loss.backward()
        for name, p in student.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (est, name)
        for name, p in teacher.named_parameters():
            assert p.grad is None, (est, name)


def test_jacobian_loss_is_zero_for_identical_networks():
    """Student == teacher: J_S = J_T, so every product difference is exactly zero."""
    net = StageNet(3)
    x = _inputs().requires_grad_(True)
    maps = net(x)
    for est in ("per_stage", "joint"):
        assert jacobian_projection_loss(x, maps, [m for m in net(x)], n_proj=2, estimator=est).item() == 0.0


def test_jacobian_loss_rejects_bad_inputs():
    """Input without grad, mismatched stage shapes or counts, n_proj < 1, unknown estimator or
    reduction: clear ValueErrors before any work."""
    student, teacher, x, fs, ft = _nets_and_maps()
    with pytest.raises(ValueError, match="require grad"):
        jacobian_projection_loss(x.detach(), fs, ft)
    with pytest.raises(ValueError, match="differ in shape"):
        jacobian_projection_loss(x, fs, [ft[0], ft[1][:, :1]])
    with pytest.raises(ValueError, match="same, non-zero number"):
        jacobian_projection_loss(x, fs, ft[:1])
    with pytest.raises(ValueError, match="same, non-zero number"):
        jacobian_projection_loss(x, [], [])
    with pytest.raises(ValueError, match="n_proj"):
        jacobian_projection_loss(x, fs, ft, n_proj=0)
    with pytest.raises(ValueError, match="estimator"):
        jacobian_projection_loss(x, fs, ft, estimator="both")
    with pytest.raises(ValueError, match="projection reduction"):
        jacobian_projection_loss(x, fs, ft, projections="max")


# ------------------------------------------------------------------------------ feature maps
def _maps(seed=0, shape=(4, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("kind", ["cosine", "l2", "mse"])
def test_feature_distance_of_identical_maps_is_zero(kind):
    """d(f, f) = 0 (l2 carries a 1e-12 floor under its sqrt: at most 1e-6)."""
    f = _maps()
    d = feature_distance(f, f.clone(), kind)
    assert d.shape == (4,)
    assert d.abs().max().item() < 2e-6


def test_feature_distance_hand_values():
    """cosine = 1 - cos of the flattened maps, l2 = Euclidean distance, mse = mean squared
    difference per element (C*H*W elements)."""
    a, b = _maps(0), _maps(1)
    af, bf = a.flatten(1), b.flatten(1)
    cos = 1 - (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1))
    assert torch.allclose(feature_distance(a, b, "cosine"), cos, atol=1e-6)
    assert torch.allclose(feature_distance(a, b, "l2"), (af - bf).norm(dim=1), atol=1e-5)
    assert torch.allclose(feature_distance(a, b, "mse"), (af - bf).pow(2).sum(1) / af.shape[1], atol=1e-6)


def test_cosine_is_scale_invariant_and_l2_mse_are_not():
    """Rescaling the student's map by 3.7 leaves the cosine distance unchanged (only directions
    matter) but changes l2 and mse (they compare magnitudes)."""
    a, b = _maps(0), _maps(1)
    assert torch.allclose(feature_distance(a * 3.7, b, "cosine"), feature_distance(a, b, "cosine"), atol=1e-6)
    for kind in ("l2", "mse"):
        assert not torch.allclose(feature_distance(a * 3.7, b, kind), feature_distance(a, b, kind), rtol=1e-2)


def test_cosine_of_opposite_maps_is_two():
    """cos(f, -f) = -1: the largest cosine distance, 2."""
    a = _maps()
    assert torch.allclose(feature_distance(a, -a, "cosine"), torch.full((4,), 2.0), atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "l2", "mse"])
def test_feature_map_loss_sums_stage_means_and_detaches_teacher(kind):
    """feature_map_loss = sum over stages of the batch mean of the per-sample distance; the
    teacher's maps are targets (no gradient), the student's get one."""
    s = [_maps(0).requires_grad_(True), _maps(1, (4, 5, 2, 2)).requires_grad_(True)]
    t = [_maps(2).requires_grad_(True), _maps(3, (4, 5, 2, 2)).requires_grad_(True)]
    loss = feature_map_loss(s, t, kind)
    expected = sum(feature_distance(a, b, kind).mean() for a, b in zip(s, t))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(f.grad is None for f in t)


def test_feature_losses_reject_mismatches():
    """Different map shapes, stage counts, empty lists or an unknown distance are errors."""
    a = _maps()
    with pytest.raises(ValueError, match="differ in shape"):
        feature_distance(a, a[:, :2])
    with pytest.raises(ValueError, match="differ in shape"):
        feature_map_loss([a], [a[:2]])
    with pytest.raises(ValueError, match="same, non-zero number"):
        feature_map_loss([a, a], [a])
    with pytest.raises(ValueError, match="same, non-zero number"):
        feature_map_loss([], [])
    with pytest.raises(ValueError, match="unknown feature distance"):
        feature_distance(a, a, "l1")
    with pytest.raises(ValueError, match="differ in shape"):
        gap_l2_loss(a, a[:, :2])


# ----------------------------------------------------------------------------------- GAP-L2
def test_gap_l2_equals_hand_computed_value():
    """mean_n sum_c (mean_hw f_s - mean_hw f_t)^2, written out with loops; pooled (N, C) input
    is used as it is."""
    a, b = _maps(0, (2, 3, 2, 2)), _maps(1, (2, 3, 2, 2))
    total = 0.0
    for n in range(2):
        for c in range(3):
            total += (a[n, c].sum().item() / 4 - b[n, c].sum().item() / 4) ** 2
    assert gap_l2_loss(a, b).item() == pytest.approx(total / 2, rel=1e-5)
    pooled_a, pooled_b = a.mean(dim=(2, 3)), b.mean(dim=(2, 3))
    assert gap_l2_loss(pooled_a, pooled_b).item() == pytest.approx(total / 2, rel=1e-5)


def test_gap_l2_identical_maps_zero_and_spatially_permutation_invariant():
    """Only channel means count: identical maps give 0, and shuffling the spatial positions of
    either map (independently) does not change the loss; the teacher gets no gradient."""
    a, b = _maps(0), _maps(1)
    assert gap_l2_loss(a, a.clone()).item() == 0.0
    g = torch.Generator().manual_seed(0)
    pa, pb = torch.randperm(16, generator=g), torch.randperm(16, generator=g)
    a_perm = a.flatten(2)[:, :, pa].view_as(a)
    b_perm = b.flatten(2)[:, :, pb].view_as(b)
    assert not torch.equal(a_perm, a)
    assert gap_l2_loss(a_perm, b_perm).item() == pytest.approx(gap_l2_loss(a, b).item(), rel=1e-5)
    s, t = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    gap_l2_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


# ------------------------------------------------------------------------------ temperature
@pytest.mark.parametrize("T", [1.0, 0.5, 20.0])
def test_temperature_cross_entropy_is_ce_of_scaled_logits(T):
    """CE(softmax(z / T), y), no T^2 factor."""
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(5, 4, generator=g) * 3, torch.tensor([0, 1, 2, 3, 1])
    assert temperature_cross_entropy(z, y, T).item() == pytest.approx(F.cross_entropy(z / T, y).item(), rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_soft_cross_entropy_definition_and_minimum(T):
    """soft CE = mean_n -sum_k softmax(z_t/T)_k log softmax(z_s/T)_k; as a function of z_s it is
    minimised at z_s = z_t: gradient zero there, larger for perturbed logits; the teacher's
    logits get no gradient."""
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(5, 4, generator=g, dtype=DT) * 3, torch.randn(5, 4, generator=g, dtype=DT) * 3
    ref = -(F.softmax(z_t / T, 1) * F.log_softmax(z_s / T, 1)).sum(1).mean()
    assert soft_cross_entropy(z_s, z_t, T).item() == pytest.approx(ref.item(), rel=1e-9)

    zs = z_t.clone().requires_grad_(True)
    zt = z_t.clone().requires_grad_(True)
    at_min = soft_cross_entropy(zs, zt, T)
    at_min.backward()
    assert zs.grad.abs().max().item() < 1e-12
    assert zt.grad is None
    for k in range(3):
        delta = torch.randn(5, 4, generator=g, dtype=DT) * 0.5
        delta = delta - delta.mean(1, keepdim=True)  # a constant shift per row leaves the softmax as it is
        assert soft_cross_entropy(z_t + delta, z_t, T).item() > at_min.item()


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_temperature_must_be_positive(T):
    """T <= 0 is meaningless (division by zero / sign flip): both losses reject it."""
    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature"):
        temperature_cross_entropy(z, y, T)
    with pytest.raises(ValueError, match="temperature"):
        soft_cross_entropy(z, z, T)


# ------------------------------------------------------------------------- MACD (contrastive)
def test_macd_robust_loss_terms():
    """KL + normalised L2: zero for identical features; the normalised term is 2 - 2cos and
    scale-invariant; the KL matches its definition; the teacher gets no gradient."""
    from rkd.losses.contrastive import feature_kl, macd_robust_loss, normalized_l2

    torch.manual_seed(0)
    s = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    assert feature_kl(t, t).item() == pytest.approx(0, abs=1e-12)
    assert normalized_l2(t, t).item() == pytest.approx(0, abs=1e-12)
    cos = torch.nn.functional.cosine_similarity(s, t, dim=1)
    assert normalized_l2(s, t).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-9)
    assert normalized_l2(3.0 * s, t).item() == pytest.approx(normalized_l2(s, t).item(), rel=1e-9)
    p_t, log_p_s = t.softmax(1), s.log_softmax(1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert feature_kl(s, t).item() == pytest.approx(expected.item(), rel=1e-9)
    total, terms = macd_robust_loss(s, t)
    assert total.item() == pytest.approx((terms["kl"] + terms["nl2"]).item())
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError):
        feature_kl(s, t[:, :8])
