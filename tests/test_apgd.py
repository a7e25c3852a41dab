"""Tests for rkd.attacks.apgd (Auto-PGD: APGD-CE / -DLR / -T) and the FAB wrapper.

The model is a small MLP (64 -> 128 -> 10) trained for a few seconds on scikit-learn's 8x8
digits (1400 training images, full-batch Adam); the attacks run on 300 held-out images, where
it is ~98% accurate, with Linf 8/255 and 16/255 and L2 0.5 (robust accuracies of roughly 90%,
65% and 35%, so the comparisons are not decided by a saturated attack).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rkd.attacks  # noqa: F401  (registers the submodules in sys.modules)
from rkd.attacks import apgd, build_attack, pgd
from rkd.config.schema import AttackConfig

# ``rkd.attacks.apgd`` is the function (re-exported); the module lives in sys.modules.
apgd_module = sys.modules["rkd.attacks.apgd"]

N_CLASSES = 10
N_TEST = 300
# (norm, eps) of the agreement / strength tests
THREATS = [("linf", 8 / 255), ("linf", 16 / 255), ("l2", 0.5)]


def _threat_id(t):
    return f"{t[0]}-{t[1]:.3g}"


# --------------------------------------------------------------------------------------------
# model and data
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model():
    """(model in eval mode, x (300, 1, 8, 8) in [0, 1], y) -- an MLP trained on sklearn digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_all = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y_all = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:1400 + N_TEST]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, N_CLASSES))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(250):
            opt.zero_grad()
            F.cross_entropy(model(x_all[train]), y_all[train]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    x, y = x_all[test], y_all[test]
    assert _n_correct(model, x, y) >= 0.95 * N_TEST
    return model, x, y


def _n_correct(model, x, y) -> int:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum())


def _dist(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _ta_norm(norm):
    return "Linf" if norm == "linf" else "L2"


class ScaledLogits(nn.Module):
    """``scale * model(x)``: same decisions, a saturated softmax for a large scale."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x)


# --------------------------------------------------------------------------------------------
# (a) agreement with an independent implementation (torchattacks 3.3.0)
# --------------------------------------------------------------------------------------------
# Tolerance: 2 percentage points = 6 of the 300 points. Both attacks are near-converged on this
# model, so they disagree only on the few points whose fate at this eps depends on the random
# start and the step path; on this model and these points our APGD-CE moves by up to 1.3
# points (4 images) between seeds 0 and 1 (a binomial standard error on 300 images, ~2.8
# points at 50% accuracy, bounds unpaired estimates; the attacks here are compared on the same
# images, so only their discordant points count and the gap is far smaller). 2 points is
# about 1.5x the seed-to-seed spread: loose enough not to flake, tight enough to catch a wrong
# step rule, schedule or loss (a 10-step APGD, or PGD-7 at L2 0.5, is 3-4 points weaker here).
AGREEMENT_TOL = 0.02


@pytest.mark.parametrize("threat", THREATS, ids=_threat_id)
def test_apgd_ce_agrees_with_torchattacks(digits_model, threat):
    import torchattacks

    model, x, y = digits_model
    norm, eps = threat
    ours = _n_correct(model, apgd(model, x, y, norm=norm, eps=eps, steps=100, loss="ce"), y)
    ref = torchattacks.APGD(model, norm=_ta_norm(norm), eps=eps, steps=100, loss="ce", seed=0)
    theirs = _n_correct(model, ref(x, y), y)
    assert abs(ours - theirs) <= AGREEMENT_TOL * N_TEST, (ours, theirs)
    assert ours < _n_correct(model, x, y)  # the attack does something here


@pytest.mark.parametrize("threat", [THREATS[1], THREATS[2]], ids=_threat_id)
def test_apgd_t_agrees_with_torchattacks(digits_model, threat):
    import torchattacks

    model, x, y = digits_model
    norm, eps = threat
    ours = _n_correct(model, apgd(model, x, y, norm=norm, eps=eps, steps=100, loss="dlr", targets=9), y)
    ref = torchattacks.APGDT(model, norm=_ta_norm(norm), eps=eps, steps=100, n_classes=N_CLASSES, seed=0)
    theirs = _n_correct(model, ref(x, y), y)
    assert abs(ours - theirs) <= AGREEMENT_TOL * N_TEST, (ours, theirs)


# --------------------------------------------------------------------------------------------
# (b) ball and box
# --------------------------------------------------------------------------------------------
BALL_CASES = [
    ("linf", 8 / 255, dict(loss="ce")),
    ("linf", 16 / 255, dict(loss="dlr", restarts=2)),
    ("linf", 16 / 255, dict(loss="dlr", targets=3)),
    ("l2", 0.5, dict(loss="ce", restarts=2)),
    ("l2", 1.0, dict(loss="dlr")),
    ("l2", 0.5, dict(loss="dlr", targets=3)),
]


@pytest.mark.parametrize("norm,eps,params", BALL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BALL_CASES)])
def test_stays_in_ball_and_box(digits_model, norm, eps, params):
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    x_adv = apgd(model, x, y, norm=norm, eps=eps, steps=30, **params)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_dist(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-7).all(), _dist(x_adv, x, norm).max()
    assert _n_correct(model, x_adv, y) < _n_correct(model, x, y)


def test_misclassified_points_are_returned_unchanged_and_eps_zero_is_identity(digits_model):
    model, x, y = digits_model
    y_wrong = (y + 1) % N_CLASSES  # every point is "misclassified" w.r.t. these labels
    assert torch.equal(apgd(model, x[:20], y_wrong[:20], norm="linf", eps=8 / 255), x[:20])
    assert torch.equal(apgd(model, x[:20], y[:20], norm="l2", eps=0.0), x[:20])
    assert torch.equal(apgd(model, x[:20], y[:20], norm="l2", eps=0.5, steps=0), x[:20])


def test_rejects_bad_arguments(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="targeted DLR"):
        apgd(model, x, y, norm="linf", eps=0.03, targets=3, loss="ce")
    with pytest.raises(ValueError, match="loss"):
        apgd(model, x, y, norm="linf", eps=0.03, loss="mse")
    with pytest.raises(ValueError, match="norm"):
        apgd(model, x, y, norm="l1", eps=0.03)
    with pytest.raises(ValueError, match="restarts"):
        apgd(model, x, y, norm="l2", eps=0.5, restarts=0)
    with pytest.raises(ValueError, match="classes"):  # DLR needs 3 classes, targeted DLR 4
        two = nn.Linear(64, 2)
        apgd(nn.Sequential(nn.Flatten(), two), x, y % 2, norm="l2", eps=0.5, loss="dlr")


# --------------------------------------------------------------------------------------------
# (c) DLR is invariant to the scale of the logits; CE is masked by a saturated softmax
# --------------------------------------------------------------------------------------------
def test_dlr_loss_is_scale_and_shift_invariant():
    z = torch.randn(50, N_CLASSES, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, N_CLASSES, (50,), generator=torch.Generator().manual_seed(1))
    t = apgd_module.top_wrong_classes(z, y, 1)[:, 0]
    for fn, args in ((apgd_module.dlr_loss, (y,)), (apgd_module.targeted_dlr_loss, (y, t))):
        ref = fn(z, *args)
        assert torch.allclose(fn(1e3 * z, *args), ref, atol=1e-5)
        assert torch.allclose(fn(z + 7.0, *args), ref, atol=1e-5)
    # the untargeted DLR is the sorted-logit formula: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)
    zs = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    assert apgd_module.dlr_loss(zs, torch.tensor([0])).item() == pytest.approx(-(3 - 1) / (3 - 0))
    assert apgd_module.dlr_loss(zs, torch.tensor([2])).item() == pytest.approx(-(0 - 3) / (3 - 0))
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    assert apgd_module.targeted_dlr_loss(zs, torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(
        -(3 - 1) / (3 - (0 - 1) / 2))


@pytest.mark.parametrize("threat", [THREATS[1], THREATS[2]], ids=_threat_id)
def test_dlr_sees_through_saturated_softmax_where_ce_does_not(digits_model, threat):
    model, x, y = digits_model
    norm, eps = threat
    scaled = ScaledLogits(model, 1e3)
    dlr_plain = _n_correct(model, apgd(model, x, y, norm=norm, eps=eps, loss="dlr"), y)
    dlr_scaled = _n_correct(scaled, apgd(scaled, x, y, norm=norm, eps=eps, loss="dlr"), y)
    ce_scaled = _n_correct(scaled, apgd(scaled, x, y, norm=norm, eps=eps, loss="ce"), y)
    assert abs(dlr_scaled - dlr_plain) <= 3  # same attack up to float rounding (1 %)
    # CE's gradient p - onehot(y) is exactly 0 in float32 once the softmax saturates: the
    # scaled model looks robust to APGD-CE
    assert ce_scaled >= dlr_scaled + 0.2 * N_TEST, (ce_scaled, dlr_scaled)


# --------------------------------------------------------------------------------------------
# (d) at least as strong as PGD-7
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threat", THREATS, ids=_threat_id)
def test_at_least_as_strong_as_pgd7(digits_model, threat):
    model, x, y = digits_model
    norm, eps = threat
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pgd7 = _n_correct(model, pgd(model, x, y, norm=norm, eps=eps, steps=7), y)
    ours_ce = _n_correct(model, apgd(model, x, y, norm=norm, eps=eps, loss="ce"), y)
    assert ours_ce <= pgd7 + 1, (ours_ce, pgd7)


# --------------------------------------------------------------------------------------------
# (e) determinism, RNG, model mode, .grad, no_grad
# --------------------------------------------------------------------------------------------
class Wrapper(nn.Module):
    """A module in train mode (dropout active) around a frozen sub-module in eval mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.05)

    def forward(self, x):
        return self.inner(self.drop(x))


def test_deterministic_rng_untouched_mode_and_grad_untouched(digits_model):
    model, x, y = digits_model
    x, y = x[:80], y[:80]
    net = Wrapper(copy.deepcopy(model)).train()
    net.inner.eval()
    grads = [torch.full_like(p, 0.5) for p in net.parameters()]
    for p, g in zip(net.parameters(), grads):
        p.grad = g.clone()
    net.inner[1].bias.grad = None  # a None .grad stays None

    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        a = apgd(net, x, y, norm="linf", eps=16 / 255, steps=20, loss="dlr", targets=2, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = apgd(net, x, y, norm="linf", eps=16 / 255, steps=20, loss="dlr", targets=2, seed=5)
    assert torch.equal(a, b)
    c = apgd(net, x, y, norm="l2", eps=0.5, steps=20, seed=5)
    d = apgd(net, x, y, norm="l2", eps=0.5, steps=20, seed=6)
    assert not torch.equal(c, d)  # the seed drives the random start
    assert net.training and net.drop.training and not net.inner.training
    assert not any(m.training for m in net.inner.modules())
    assert net.inner[1].bias.grad is None
    for p, g in zip(net.parameters(), grads):
        if p is not net.inner[1].bias:
            assert torch.equal(p.grad, g)
    assert not a.requires_grad


# --------------------------------------------------------------------------------------------
# (f) target selection and the step-size schedule
# --------------------------------------------------------------------------------------------
def test_top_wrong_classes_skips_the_label_and_orders_by_logit():
    logits = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0],
                           [0.0, 9.0, 1.0, 8.0, 2.0]])
    y = torch.tensor([0, 3])  # the second point is misclassified: its label still is excluded
    assert apgd_module.top_wrong_classes(logits, y, 1).tolist() == [[2], [1]]
    assert apgd_module.top_wrong_classes(logits, y, 3).tolist() == [[2, 4, 3], [1, 4, 2]]


def test_targets_one_attacks_only_the_most_likely_wrong_class(digits_model, monkeypatch):
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    calls = []
    real_run = apgd_module._apgd_run

    def spy(model_, x_, y_, target, **kw):
        calls.append(target.clone())
        return real_run(model_, x_, y_, target, **kw)

    monkeypatch.setattr(apgd_module, "_apgd_run", spy)
    apgd(model, x, y, norm="linf", eps=16 / 255, steps=10, loss="dlr", targets=1)
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    second = logits.sort(dim=1, descending=True).indices[:, 1]  # = top wrong class if correct
    assert len(calls) == 1
    assert torch.equal(calls[0], second[correct])

    calls.clear()
    apgd(model, x, y, norm="linf", eps=4 / 255, steps=5, loss="dlr", targets=3)
    ranks = logits.sort(dim=1, descending=True).indices
    assert 1 <= len(calls) <= 3
    for rank, target in enumerate(calls, start=1):
        assert set(target.tolist()) <= set(ranks[:, rank].tolist())


def test_targets_are_capped_at_n_classes_minus_one(digits_model):
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    nine = apgd(model, x, y, norm="l2", eps=0.5, steps=10, loss="dlr", targets=9)
    many = apgd(model, x, y, norm="l2", eps=0.5, steps=10, loss="dlr", targets=50)
    assert torch.equal(nine, many)


def test_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (the period shrinks by .03 down to .06)
    assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_module.checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert apgd_module.checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_module.checkpoints(0) == []


# --------------------------------------------------------------------------------------------
# build_attack / config integration, and FAB
# --------------------------------------------------------------------------------------------
def test_build_attack_from_config(digits_model):
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    cfg = AttackConfig(kind="apgd", norm="linf", eps=16 / 255, loss="dlr", targets=9, steps=20)
    attack = build_attack("apgd", **cfg.attack_params())
    x_adv = attack(model, x, y)
    assert torch.equal(x_adv, apgd(model, x, y, norm="linf", eps=16 / 255, steps=20, loss="dlr", targets=9))
    assert attack.describe()["attack"] == "apgd"
    with pytest.raises(TypeError):
        build_attack("apgd", norm="linf", eps=0.03, step_size=0.1)


@pytest.mark.parametrize("norm,eps,targets", [("linf", 16 / 255, 3), ("l2", 0.75, 0)])
def test_fab_runs_via_build_attack_and_stays_in_ball(digits_model, monkeypatch, norm, eps, targets):
    import torchattacks

    model, x, y = digits_model
    x, y = x[:30], y[:30]
    seen = []
    real_perturb = torchattacks.FAB.perturb

    def spy(self, *args):
        seen.append((self.multi_targeted, self.n_target_classes, self.steps))
        return real_perturb(self, *args)

    monkeypatch.setattr(torchattacks.FAB, "perturb", spy)
    params = AttackConfig(kind="fab", norm=norm, eps=eps, targets=targets, steps=10).attack_params()
    attack = build_attack("fab", **params, n_classes=N_CLASSES)
    for p in model.parameters():
        assert p.grad is None
    rng_before = torch.get_rng_state()
    x_adv = attack(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert seen == [(targets > 0, targets if targets else N_CLASSES - 1, 10)]
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_dist(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-7).all()
    assert _n_correct(model, x_adv, y) < _n_correct(model, x, y)
    with pytest.raises(TypeError):
        build_attack("fab", norm=norm, eps=eps)  # n_classes is required
