"""Tests for rkd.attacks: threat models, PGD/FGSM/MI-FGSM, JSMA, torchattacks wrappers.

Everything runs on CPU with tiny models defined here (3x8x8 inputs, 4 classes) trained for a
few steps on seeded synthetic data with class-dependent means.
"""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rkd.attacks  # noqa: F401  (registers the submodules in sys.modules)
from rkd.attacks import (
    ATTACK_KINDS,
    L2Step,
    LinfStep,
    PGDAttack,
    build_attack,
    fgsm,
    jsma,
    jsma_success_rate,
    mifgsm,
    pgd,
)

# ``rkd.attacks.jsma`` is the function (re-exported), the module lives in sys.modules.
jsma_module = sys.modules["rkd.attacks.jsma"]

N_CLASSES = 4
SHAPE = (3, 8, 8)


# --------------------------------------------------------------------------------------------
# tiny models and data
# --------------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
    def __init__(self, n_classes: int = N_CLASSES, bn: bool = False, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(8 * 4 * 4, n_classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)  # (N, 8, 4, 4) for 8x8 inputs
        return self.head(self.drop(h.flatten(1)))


def make_data(n: int, seed: int, shape=SHAPE, n_classes: int = N_CLASSES):
    """Class c has mean 0.5 + 0.08 * pattern_c (pattern in {-1, +1}); noise std 0.15."""
    g = torch.Generator().manual_seed(1234)  # the class patterns are fixed across splits
    patterns = torch.randint(0, 2, (n_classes, *shape), generator=g).float() * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = 0.5 + 0.08 * patterns[y] + 0.15 * torch.randn(n, *shape, generator=g)
    return x.clamp(0, 1), y


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def trained():
    """A TinyCNN trained to high clean accuracy on the synthetic task; returns (model, x, y)."""
    torch.manual_seed(0)
    model = TinyCNN()
    xtr, ytr = make_data(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    x, y = make_data(64, seed=2)
    assert accuracy(model, x, y) > 0.9
    return model, x, y


# --------------------------------------------------------------------------------------------
# every kind: box, ball, effect
# --------------------------------------------------------------------------------------------
EPS_INF = 0.03
EPS_L2 = 0.5

KIND_CASES = [
    ("fgsm", dict(eps=EPS_INF), "linf", EPS_INF),
    ("pgd", dict(norm="linf", eps=EPS_INF, steps=5), "linf", EPS_INF),
    ("pgd", dict(norm="l2", eps=EPS_L2, steps=5), "l2", EPS_L2),
    ("pgd", dict(norm="linf", eps=EPS_INF, steps=3, restarts=2, momentum=0.9), "linf", EPS_INF),
    ("mifgsm", dict(eps=EPS_INF, steps=5), "linf", EPS_INF),
    ("jitter", dict(eps=EPS_INF, steps=5, seed=0), "linf", EPS_INF),
    ("square", dict(norm="linf", eps=EPS_INF, n_queries=30), "linf", EPS_INF),
    ("square", dict(norm="l2", eps=EPS_L2, n_queries=30), "l2", EPS_L2),
    ("autoattack", dict(norm="linf", eps=EPS_INF, n_classes=N_CLASSES), "linf", EPS_INF),
    ("autoattack", dict(norm="l2", eps=EPS_L2, n_classes=N_CLASSES), "l2", EPS_L2),
    ("cw", dict(c=1.0, steps=20, lr=0.05), None, None),
]


def _dist(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("kind,params,norm,eps", KIND_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(KIND_CASES)])
def test_every_kind_in_box_and_ball_and_effective(trained, kind, params, norm, eps):
    model, x, y = trained
    # AutoAttack keeps running its sub-attacks (Square: 5000 queries) on the points that
    # survive; a tiny batch keeps its cost small.
    if kind == "autoattack":
        x, y = x[:6], y[:6]
    attack = build_attack(kind, **params)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if norm is not None:
        assert (_dist(x_adv, x, norm) <= eps + 1e-6).all(), _dist(x_adv, x, norm).max()
    assert (x_adv != x).any(), "attack changed nothing"
    assert accuracy(model, x_adv, y) <= accuracy(model, x, y)


# --------------------------------------------------------------------------------------------
# eps = 0, steps = 0
# --------------------------------------------------------------------------------------------
def test_eps_zero_and_zero_steps_return_clean_input(trained):
    model, x, y = trained
    outs = [
        fgsm(model, x, y, 0.0),
        mifgsm(model, x, y, 0.0, steps=5),
        pgd(model, x, y, norm="linf", eps=0.0, steps=5),
        pgd(model, x, y, norm="l2", eps=0.0, steps=5, restarts=3),
        pgd(model, x, y, norm="linf", eps=EPS_INF, steps=0, random_start=True),
        build_attack("jitter", eps=0.0, steps=3)(model, x, y),
        build_attack("square", norm="linf", eps=0.0, n_queries=10)(model, x, y),
    ]
    for out in outs:
        assert torch.equal(out, x)
        assert accuracy(model, out, y) == accuracy(model, x, y)
    # a result is a fresh tensor, never the input itself
    assert outs[0].data_ptr() != x.data_ptr()


# --------------------------------------------------------------------------------------------
# agreement with torchattacks
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained64(trained):
    model, x, y = trained
    m64 = copy.deepcopy(model).double().eval()
    return m64, x[:8].double(), y[:8]


def test_pgd_linf_matches_torchattacks(trained64):
    import torchattacks

    model, x, y = trained64
    eps, alpha, steps = 0.03, 0.007, 6
    ours = pgd(model, x, y, norm="linf", eps=eps, steps=steps, step_size=alpha, random_start=False)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (ours - ref).abs().max().item() < 1e-10
    assert (ours != x).any()
    # With the same seed even the random start agrees (same RNG calls in the same order).
    torch.manual_seed(7)
    ours = pgd(model, x, y, norm="linf", eps=eps, steps=steps, step_size=alpha)
    torch.manual_seed(7)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    assert (ours - ref).abs().max().item() < 1e-10


def test_pgd_l2_matches_torchattacks(trained64):
    """torchattacks normalises by ||g|| + 1e-10 of the *mean* loss, we by ||g|| + 1e-10 of the
    *summed* loss (8x larger gradient here), so the step direction differs in relative terms by
    ~1e-10 * 7/8 / ||g|| -- far below the 1e-8 tolerance for gradients of this model."""
    import torchattacks

    model, x, y = trained64
    eps, alpha, steps = 0.5, 0.15, 6
    ours = pgd(model, x, y, norm="l2", eps=eps, steps=steps, step_size=alpha, random_start=False)
    ref = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (ours - ref).abs().max().item() < 1e-8
    assert (_dist(ours, x, "l2") > 0.1).all()


def test_fgsm_and_mifgsm_match_torchattacks(trained64):
    """torchattacks' MI-FGSM divides by mean|g| instead of ||g||_1: a per-sample constant factor
    (the number of features), which the sign step does not see."""
    import torchattacks

    model, x, y = trained64
    ours = fgsm(model, x, y, 0.03)
    ref = torchattacks.FGSM(model, eps=0.03)(x, y)
    assert (ours - ref).abs().max().item() < 1e-10
    assert torch.allclose((ours - x).abs().amax(1).amax(1).amax(1)[(ours != x).flatten(1).any(1)],
                          torch.tensor(0.03, dtype=x.dtype))

    ours = mifgsm(model, x, y, 0.03, steps=5, decay=1.0)
    ref = torchattacks.MIFGSM(model, eps=0.03, alpha=0.03 / 5, steps=5, decay=1.0)(x, y)
    assert (ours - ref).abs().max().item() < 1e-10


# --------------------------------------------------------------------------------------------
# model state: train/eval mode and parameter gradients
# --------------------------------------------------------------------------------------------
MODE_KINDS = [
    ("fgsm", dict(eps=EPS_INF)),
    ("pgd", dict(norm="l2", eps=EPS_L2, steps=2, restarts=2)),
    ("mifgsm", dict(eps=EPS_INF, steps=2)),
    ("jitter", dict(eps=EPS_INF, steps=2)),
    ("square", dict(norm="linf", eps=EPS_INF, n_queries=5)),
    ("cw", dict(steps=3)),
    ("autoattack", dict(norm="linf", eps=0.3, n_classes=N_CLASSES)),
]


@pytest.mark.parametrize("kind,params", MODE_KINDS, ids=[k for k, _ in MODE_KINDS])
@pytest.mark.parametrize("training", [True, False])
def test_attacks_leave_mode_and_grads_untouched(kind, params, training):
    torch.manual_seed(0)
    model = TinyCNN(bn=True, dropout=0.2)
    model.train(training)
    if training:
        model.bn.eval()  # a caller's frozen BatchNorm inside a training model must survive
    modes = {name: m.training for name, m in model.named_modules()}
    x, y = make_data(4, seed=3)
    build_attack(kind, **params)(model, x, y)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())

    # existing gradients are neither accumulated into nor replaced
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in model.parameters()]
    build_attack(kind, **params)(model, x, y)
    for p, g in zip(model.parameters(), grads):
        assert p.grad is g and torch.all(p.grad == 0.5)


def test_pgd_works_under_no_grad_and_keeps_rng_of_wrappers(trained):
    model, x, y = trained
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=EPS_INF, steps=3)
    assert (x_adv != x).any()
    # Square reseeds torch internally; the wrapper must not reset the caller's RNG stream.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_attack("square", norm="linf", eps=EPS_INF, n_queries=5)(model, x[:4], y[:4])
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------------------------
# attack strength: restarts, eps, steps, targeted
# --------------------------------------------------------------------------------------------
def test_restarts_never_worse_than_one_run(trained):
    model, x, y = trained
    kw = dict(norm="linf", eps=0.012, steps=4, random_start=True)
    torch.manual_seed(0)
    single = pgd(model, x, y, restarts=1, **kw)
    torch.manual_seed(0)
    multi = pgd(model, x, y, restarts=4, **kw)
    with torch.no_grad():
        lo_s, lo_m = model(single), model(multi)
    ok_s, ok_m = lo_s.argmax(1) != y, lo_m.argmax(1) != y
    assert 0 < ok_s.sum() < len(y), "eps should give a partial success for this test to bite"
    assert (ok_m | ~ok_s).all(), "a sample fooled by one run must stay fooled with restarts"
    same = ok_s == ok_m
    loss_s = F.cross_entropy(lo_s, y, reduction="none")
    loss_m = F.cross_entropy(lo_m, y, reduction="none")
    assert (loss_m[same] >= loss_s[same] - 1e-6).all()
    assert ok_m.sum() >= ok_s.sum()


@pytest.mark.parametrize("norm,eps_small,eps_big", [("linf", 0.01, 0.05), ("l2", 0.2, 1.0)])
def test_pgd_reduces_accuracy_monotonically_in_eps(trained, norm, eps_small, eps_big):
    model, x, y = trained
    clean = accuracy(model, x, y)
    torch.manual_seed(0)
    acc_small = accuracy(model, pgd(model, x, y, norm=norm, eps=eps_small, steps=10), y)
    torch.manual_seed(0)
    acc_big = accuracy(model, pgd(model, x, y, norm=norm, eps=eps_big, steps=10), y)
    assert acc_big <= acc_small <= clean
    assert acc_big < 0.5 * clean
    # "0 steps" of a step-count sweep is exactly the clean accuracy
    assert accuracy(model, pgd(model, x, y, norm=norm, eps=eps_big, steps=0), y) == clean


def test_targeted_pgd_moves_towards_target(trained):
    model, x, y = trained
    target = (y + 1) % N_CLASSES
    x_adv = pgd(model, x, target, norm="linf", eps=0.05, steps=10, targeted=True)
    with torch.no_grad():
        hit_clean = (model(x).argmax(1) == target).float().mean()
        hit_adv = (model(x_adv).argmax(1) == target).float().mean()
    assert hit_adv > 0.5 > hit_clean


def test_default_step_size_and_describe():
    att = PGDAttack(norm="L2", eps=0.5, steps=10)
    d = att.describe()
    assert d["norm"] == "l2" and d["attack"] == "pgd"
    assert math.isclose(d["step_size"], 2.5 * 0.5 / 10)
    built = build_attack("pgd", norm="linf", eps=8 / 255, steps=7)
    assert math.isclose(built.describe()["step_size"], 2.5 * (8 / 255) / 7)
    assert build_attack("cw", c=0.5).describe() == {"attack": "cw", "c": 0.5}


def test_build_attack_errors():
    assert set(ATTACK_KINDS) == {"fgsm", "pgd", "mifgsm", "cw", "autoattack", "jitter", "square", "apgd", "fab"}
    with pytest.raises(ValueError) as e:
        build_attack("deepfool", eps=0.1)
    assert "pgd" in str(e.value) and "autoattack" in str(e.value)
    with pytest.raises(TypeError):
        build_attack("fgsm", eps=0.1, steps=3)  # fgsm has no steps
    with pytest.raises(TypeError):
        build_attack("fgsm")  # eps is required
    with pytest.raises(ValueError):
        build_attack("pgd", norm="l1", eps=1.0)


# --------------------------------------------------------------------------------------------
# threat-model steps
# --------------------------------------------------------------------------------------------
def test_steps_project_step_and_zero_gradient():
    torch.manual_seed(0)
    x = torch.rand(5, *SHAPE)
    far = x + torch.randn_like(x)
    for cls, eps in ((LinfStep, 0.1), (L2Step, 0.7)):
        s = cls(eps, step_size=0.05)
        p = s.project(far, x)
        assert p.min() >= 0 and p.max() <= 1
        assert (_dist(p, x, s.norm) <= eps + 1e-6).all()
        r = s.random_init(x)
        assert (_dist(s.project(r, x), x, s.norm) <= eps + 1e-6).all()
        assert (r != x).any()
        # zero gradient: no move, no NaN
        z = s.step(x, torch.zeros_like(x))
        assert torch.equal(z, x)
    g = torch.randn_like(x)
    assert torch.allclose(LinfStep(0.1, 0.02).step(x, g) - x, 0.02 * g.sign())
    step_l2 = L2Step(1.0, 0.3).step(x, g) - x
    assert torch.allclose(step_l2.flatten(1).norm(dim=1), torch.full((5,), 0.3), atol=1e-6)
    # points already inside the ball and the box are not moved by the projection
    inside = (x + 0.01 * torch.randn_like(x).sign()).clamp(0, 1)
    assert torch.allclose(LinfStep(0.1, 0.0).project(inside, x), inside)


# --------------------------------------------------------------------------------------------
# JSMA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_candidates, scores_at_once", [
    (512, 1 << 24),  # the Pareto candidates, scored exhaustively
    (0, 1 << 24),  # every sample through the branch and bound, all samples at once
    (0, 100),  # the branch and bound one sample at a time
    (8, 1 << 24),  # a mix: few candidates exhaustively, the others by branch and bound
])
def test_saliency_pair_search_is_exact(max_candidates, scores_at_once, monkeypatch):
    """The pair search (Pareto candidates, else branch and bound, batched over samples) equals
    the brute-force n x n search of each sample, also where every point is on the frontier."""
    monkeypatch.setattr(jsma_module, "_MAX_CANDIDATES", max_candidates)
    monkeypatch.setattr(jsma_module, "_PAIR_SCORES", scores_at_once)
    g = torch.Generator().manual_seed(0)
    for trial in range(24):
        n = 40 + trial
        alpha = torch.randn(3, n, generator=g)
        beta = torch.randn(3, n, generator=g) - 0.3 * alpha
        if trial % 4 == 3:  # a falling line: y = -beta falls as x = alpha grows, all on the frontier
            beta = alpha - 1.0 + 0.01 * torch.randn(3, n, generator=g)
        domain = torch.rand(3, n, generator=g) > 0.2
        p, q, found = jsma_module._saliency_pairs(alpha, beta, domain, row_chunk=8)
        for s in range(3):
            a = alpha[s].double()
            b = beta[s].double()
            A = a[:, None] + a[None, :]
            B = b[:, None] + b[None, :]
            ok = (A > 0) & (B < 0) & domain[s][:, None] & domain[s][None, :]
            ok &= ~torch.eye(n, dtype=torch.bool)
            score = torch.where(ok, A * -B, torch.zeros((), dtype=torch.float64))
            assert bool(found[s]) == bool(ok.any())
            if ok.any():
                assert math.isclose(score[p[s], q[s]].item(), score.max().item(), rel_tol=1e-12)
                assert p[s] < q[s]


def test_jsma_on_trained_model(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    n_feat = x[0].numel()
    gamma = 0.15
    target = (y + 1) % N_CLASSES
    x_adv, success, n_changed = jsma(model, x, target, theta=1.0, gamma=gamma, batch_chunk=3)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert success.any()
    with torch.no_grad():
        assert torch.equal(success, model(x_adv).argmax(1) == target)
    assert (n_changed <= gamma * n_feat).all()
    assert torch.equal(n_changed, (x_adv != x).flatten(1).sum(1))
    assert (x_adv >= x).all(), "theta=+1 only increases features"
    changed = x_adv != x
    assert torch.all(x_adv[changed] == 1.0), "theta=+1 sets the chosen features to the max"
    assert (n_changed % 2 == 0).all(), "features change in pairs"

    # theta = -1 only decreases features
    x_dec, _, n_dec = jsma(model, x, target, theta=-1.0, gamma=gamma)
    assert (x_dec <= x).all() and (n_dec > 0).any()
    assert torch.all(x_dec[x_dec != x] == 0.0)


def test_jsma_success_rate(trained):
    model, x, y = trained
    rate = jsma_success_rate(model, x[:6], y[:6], N_CLASSES, targets="random", seed=0, gamma=0.15)
    assert 0 < rate <= 1
    rate_all, det = jsma_success_rate(model, x[:3], y[:3], N_CLASSES, targets="all", gamma=0.15,
                                      return_details=True)
    assert det["target"].shape == (3 * (N_CLASSES - 1),)
    assert (det["target"] != y[:3][det["sample_index"]]).all()
    assert math.isclose(rate_all, det["success"].float().mean().item())
    assert 0 < rate_all <= 1
    # same seed -> same targets -> same rate
    assert rate == jsma_success_rate(model, x[:6], y[:6], N_CLASSES, seed=0, gamma=0.15)


def test_jsma_runs_on_cifar_sized_inputs():
    """3x32x32 = 3072 features: the pair search must not build 3072^2 matrices per sample."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 1) % 10
    x_adv, success, n_changed = jsma(model, x, target, gamma=0.02)
    assert (n_changed <= 0.02 * 3072).all() and (x_adv >= x).all()
    assert (n_changed > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_follow_the_device_of_x(trained):
    model, x, y = trained
    model = copy.deepcopy(model).cuda()
    x, y = x[:8].cuda(), y[:8].cuda()
    for kind, params, norm, eps in KIND_CASES:
        if kind == "autoattack":
            continue
        x_adv = build_attack(kind, **params)(model, x, y)
        assert x_adv.device == x.device and x_adv.min() >= 0 and x_adv.max() <= 1
        if norm is not None:
            assert (_dist(x_adv, x, norm) <= eps + 1e-6).all()
    x_adv, success, n_changed = jsma(model, x, (y + 1) % N_CLASSES, gamma=0.15)
    assert x_adv.device == x.device and success.device == x.device and success.any()
