"""The adversarial robustness distillation family (ARD, RSLAD, IAD, MTARD, AdaAD): each loss
against a hand computation, each inner attack against its stated objective, frozen teachers,
MTARD's weight rule and IAD's reliability weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rkd.config import load_config
from rkd.losses import soft_label_kl
from rkd.methods import Adaad, Ard, Iad, Mtard, Rslad, build_method
from rkd.methods.robust_distillation import DistillAttackConfig, GaussianStartAttackConfig
from rkd.models import create_model

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed):
    """In float64: at tau = 30 the KL is a small difference of near-uniform softmaxes."""
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=K, width=4, layers=[1, 1, 1, 1]).double().eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, K, (6,), generator=g)


def _kl_by_hand(p_t, log_p_s):
    """sum over classes and batch of p_t (log p_t - log p_s), written out element by element."""
    total = 0.0
    for n in range(p_t.shape[0]):
        for k in range(p_t.shape[1]):
            total += float(p_t[n, k]) * (math.log(float(p_t[n, k])) - float(log_p_s[n, k]))
    return total


# ------------------------------------------------------------------------------- the KL itself
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_soft_label_kl_reductions_and_tau_squared_by_hand(tau):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    total = _kl_by_hand(F.softmax(t / tau, 1), F.log_softmax(s / tau, 1))
    assert soft_label_kl(s, t, tau=tau).item() == pytest.approx(total / 3)
    assert soft_label_kl(s, t, tau=tau, reduction="class_mean").item() == pytest.approx(total / 15)
    assert soft_label_kl(s, t, tau=tau, tau_squared=True).item() == pytest.approx(tau * tau * total / 3)
    assert soft_label_kl(s, t, tau=tau, reduction="none").sum().item() == pytest.approx(total)
    # nn.KLDivLoss()'s default ("mean") is what the authors' code calls; class_mean is it
    ref = torch.nn.KLDivLoss()(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1))
    assert soft_label_kl(s, t, tau=tau, reduction="class_mean").item() == pytest.approx(ref.item())


def test_soft_label_kl_detaches_the_target_unless_told():
    s, t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    soft_label_kl(s, t).backward()
    assert t.grad is None and s.grad is not None
    soft_label_kl(s, t, detach_target=False).backward()
    assert t.grad is not None


def test_soft_label_kl_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape|one shape"):
        soft_label_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tau"):
        soft_label_kl(torch.zeros(2, 3), torch.zeros(2, 3), tau=0)
    with pytest.raises(ValueError, match="reduction"):
        soft_label_kl(torch.zeros(2, 3), torch.zeros(2, 3), reduction="sum")


# --------------------------------------------------------------------- losses by hand, per method
def _fixed_attack(method, x_adv):
    method.inner_attack = lambda *a, **k: x_adv  # the loss given the attack's output


def _outputs(net, x):
    with torch.no_grad():
        return net(x).double()


@pytest.mark.parametrize("alpha,reduction", [(1.0, "class_mean"), (0.7, "batchmean")])
def test_ard_loss_by_hand(batch, alpha, reduction):
    x, y = batch
    student, teacher = _net(0), _net(1)
    x_adv = (x + 0.02).clamp(0, 1)
    m = Ard(student, teacher, tau=30.0, alpha=alpha, attack=DistillAttackConfig(), kl_reduction=reduction).eval()
    _fixed_attack(m, x_adv)
    out = m.training_step(x, y)
    div = 6 * (K if reduction == "class_mean" else 1)
    kl = 900 * _kl_by_hand(F.softmax(_outputs(teacher, x) / 30, 1), F.log_softmax(_outputs(student, x_adv) / 30, 1))
    expected = alpha * kl / div + (1 - alpha) * F.cross_entropy(_outputs(student, x), y).item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    assert ("ce" in out.terms) == (alpha < 1)


def test_rslad_loss_by_hand(batch):
    x, y = batch
    student, teacher = _net(0), _net(1)
    x_adv = (x - 0.02).clamp(0, 1)
    m = Rslad(student, teacher, adv_weight=5 / 6, attack=GaussianStartAttackConfig()).eval()
    _fixed_attack(m, x_adv)
    p_t = F.softmax(_outputs(teacher, x), 1)
    kl_adv = _kl_by_hand(p_t, F.log_softmax(_outputs(student, x_adv), 1)) / 6  # batchmean, the default
    kl_clean = _kl_by_hand(p_t, F.log_softmax(_outputs(student, x), 1)) / 6
    out = m.training_step(x, y)
    assert out.loss.item() == pytest.approx(5 / 6 * kl_adv + 1 / 6 * kl_clean, rel=1e-4)
    assert out.terms["kl_adv"].item() == pytest.approx(kl_adv, rel=1e-4)


@pytest.mark.parametrize("epoch", [0, 3])
def test_iad_loss_by_hand_before_and_after_its_start_epoch(batch, epoch):
    x, y = batch
    student, teacher = _net(0), _net(1)
    x_adv = (x + 0.03).clamp(0, 1)
    m = Iad(student, teacher, tau=2.0, alpha=1.0, beta=0.1, start_epoch=2, attack=DistillAttackConfig(),
            kl_reduction="batchmean").eval()
    _fixed_attack(m, x_adv)
    m.on_epoch_start(epoch, 1.0)
    s_adv, s_nat, t_nat = _outputs(student, x_adv), _outputs(student, x), _outputs(teacher, x)
    expected = 4 * _kl_by_hand(F.softmax(t_nat / 2, 1), F.log_softmax(s_adv / 2, 1)) / 6
    if epoch >= 2:
        w = F.softmax(_outputs(teacher, x_adv), 1)[torch.arange(6), y] ** 0.1
        p_s = F.softmax(s_nat, 1)
        for n in range(6):
            expected += (1 - float(w[n])) * _kl_by_hand(p_s[n:n + 1], F.log_softmax(s_adv[n:n + 1], 1)) / 6
        assert m.training_step(x, y).terms["reliability"].item() == pytest.approx(w.mean().item(), rel=1e-5)
    out = m.training_step(x, y)
    assert ("kl_introspection" in out.terms) == (epoch >= 2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)


def test_iad_reliability_is_the_teachers_true_class_probability_to_the_beta():
    from rkd.methods.iad import reliability

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    p = F.softmax(logits, 1)
    w = reliability(logits, torch.tensor([0, 2]), beta=0.5)
    assert w.tolist() == pytest.approx([p[0, 0].item() ** 0.5, p[1, 2].item() ** 0.5])


def test_iad_introspection_target_is_not_detached(batch):
    """As in the authors' code the gradient also flows through the target S(x): the loss depends
    on the clean image (the attack's output is fixed here, the teacher term has no graph)."""
    x, y = batch
    m = Iad(_net(0), _net(1), start_epoch=1, attack=DistillAttackConfig()).eval()
    _fixed_attack(m, (x + 0.03).clamp(0, 1))
    x = x.clone().requires_grad_(True)
    for epoch, flows in ((0, False), (1, True)):
        m.on_epoch_start(epoch, 1.0)
        (grad,) = torch.autograd.grad(m.training_step(x, y).loss, x, allow_unused=True)
        assert (grad is not None and grad.abs().sum() > 0) == flows


def test_adaad_loss_by_hand(batch):
    x, y = batch
    student, teacher = _net(0), _net(1)
    x_adv = (x + 0.01).clamp(0, 1)
    m = Adaad(student, teacher, alpha=0.75, attack=GaussianStartAttackConfig(), kl_reduction="class_mean").eval()
    _fixed_attack(m, x_adv)
    kl_adv = _kl_by_hand(F.softmax(_outputs(teacher, x_adv), 1), F.log_softmax(_outputs(student, x_adv), 1))
    kl_nat = _kl_by_hand(F.softmax(_outputs(teacher, x), 1), F.log_softmax(_outputs(student, x), 1))
    out = m.training_step(x, y)
    assert out.loss.item() == pytest.approx((0.75 * kl_adv + 0.25 * kl_nat) / (6 * K), rel=1e-4)


# ------------------------------------------------------------------------------- MTARD's weights
def test_mtard_weights_follow_the_update_rule(batch):
    x, y = batch
    student, teacher, clean = _net(0), _net(1), _net(2)
    m = Mtard(student, teacher, clean, weight_rate=0.2, weight_beta=2.0, attack=GaussianStartAttackConfig(steps=1))
    m.train()
    m.on_epoch_start(0, 0.5)  # eta scaled by the LR: 0.2 * 0.5
    w, l0 = 0.5, None
    for step in range(3):
        out = m.training_step(x, y)
        losses = torch.tensor([out.terms["kl_adv"].item(), out.terms["kl_clean"].item()], dtype=torch.float64)
        l0 = losses if l0 is None else l0
        r = (losses / l0) ** 2.0
        w = w - 0.1 * (w - (r[1] / r.sum()).item())
        assert m.clean_weight.item() == pytest.approx(w, rel=1e-5)
        assert out.terms["clean_weight"].item() == pytest.approx(w, rel=1e-5)
        expected = (1 - w) * out.terms["kl_adv"].item() + w * out.terms["kl_clean"].item()
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
        student.train()
        with torch.no_grad():  # move the student so the losses change
            for p in student.parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert m.initial_losses.tolist() == pytest.approx(l0.tolist(), rel=1e-5)
    assert {"clean_weight", "initial_losses"} <= set(m.trainable_state_dict())  # resumed with the run


def test_mtard_weights_do_not_move_in_eval_mode(batch):
    m = Mtard(_net(0), _net(1), _net(2), attack=GaussianStartAttackConfig(steps=1)).eval()
    m.training_step(*batch)
    assert m.clean_weight.item() == 0.5 and m.initial_losses.isnan().all()


# ------------------------------------------------------------------------------- inner attacks
def _objective(m, x, x_adv, y, objective):
    with torch.no_grad():
        s = m.model(x_adv)
        if objective == "ce":
            return F.cross_entropy(s, y, reduction="sum").item()
        target = m.teacher(x if objective == "kl_clean_teacher" else x_adv)
        return soft_label_kl(s, target, reduction="none").sum().item()


@pytest.mark.parametrize("cls,objective", [(Ard, "ce"), (Iad, "ce"), (Mtard, "ce"), (Rslad, "kl_clean_teacher"),
                                           (Adaad, "kl_moving_teacher")])
def test_inner_attack_raises_its_objective_inside_the_ball(batch, cls, objective):
    x, y = batch
    student, teacher = _net(0), _net(1)
    attack = (GaussianStartAttackConfig(steps=5) if cls in (Rslad, Adaad, Mtard)
              else DistillAttackConfig(steps=5, mode="eval"))
    extra = (_net(2),) if cls is Mtard else ()
    m = cls(student, teacher, *extra, attack=attack).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        t_clean = teacher(x)
    x_adv = m.inner_attack(x, y, objective, teacher_logits=t_clean)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert _objective(m, x, x_adv, y, objective) > _objective(m, x, x, y, objective)


def test_adaad_attack_differs_from_a_fixed_teacher_target(batch):
    """Re-querying the teacher at the moving point is a different objective from RSLAD's."""
    x, y = batch
    student, teacher = _net(0), _net(1)
    m = Adaad(student, teacher, attack=GaussianStartAttackConfig(steps=3)).eval()
    torch.manual_seed(0)
    moving = m.inner_attack(x, y, "kl_moving_teacher")
    torch.manual_seed(0)
    fixed = m.inner_attack(x, y, "kl_clean_teacher", teacher_logits=teacher(x).detach())
    assert not torch.equal(moving, fixed)


def test_attack_mode_and_start_follow_the_config(batch, monkeypatch):
    import rkd.methods.robust_distillation as rd

    seen = {}

    def fake_pgd(net, x, y, **kw):
        seen.update(training=m.model.training, random_start=kw["random_start"], x_init=kw["x_init"])
        return x

    monkeypatch.setattr(rd, "pgd", fake_pgd)
    x, y = batch
    m = Ard(_net(0), _net(1), attack=DistillAttackConfig()).train()
    m.training_step(x, y)
    assert seen["training"] and seen["random_start"] and seen["x_init"] is None  # uniform start, train mode
    m = Rslad(_net(0), _net(1), attack=GaussianStartAttackConfig()).train()
    m.training_step(x, y)
    assert not seen["training"] and not seen["random_start"]  # gaussian start, eval mode
    assert (seen["x_init"] - x).abs().max() < 0.01 and not torch.equal(seen["x_init"], x)
    assert m.model.training  # restored after the attack


# ------------------------------------------------------------------------------- teachers frozen
_TEACHERS = {"ard": ["teacher"], "rslad": ["teacher"], "iad": ["teacher"], "adaad": ["teacher"],
             "mtard": ["teacher", "clean_teacher"]}


@pytest.mark.parametrize("name", sorted(_TEACHERS))
def test_teachers_are_frozen_get_no_gradient_and_are_not_checkpointed(batch, name):
    roles = _TEACHERS[name]
    overrides = [f"method.name={name}", "model.width=4", "model.layers=[1,1,1,1]", "train.epochs=2",
                 "method.attack.steps=1", *[f"method.{r}.run_dir=/nonexistent" for r in roles]]
    if name == "iad":
        overrides.append("method.start_epoch=0")
    cfg = load_config(None, overrides)
    teachers = {r: _net(i + 1).train() for i, r in enumerate(roles)}
    student = _net(0)
    m = build_method(cfg.method, student, models=teachers).train()
    assert m.model is student and student.training
    for r, t in teachers.items():
        assert getattr(m, r) is t and not t.training and not any(p.requires_grad for p in t.parameters())
    m.on_epoch_start(0, 1.0)
    out = m.training_step(*batch)
    out.loss.backward()
    assert all(p.grad is None for t in teachers.values() for p in t.parameters())
    assert any(p.grad is not None for p in student.parameters())
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in student.parameters()}
    assert not any(k.startswith(tuple(f"{r}." for r in roles)) for k in m.trainable_state_dict())
    with pytest.raises(ValueError, match="needs a"):
        build_method(cfg.method, _net(3))


def test_iad_start_epoch_past_training_is_refused():
    with pytest.raises(Exception, match="start_epoch 60 >= train.epochs 12"):
        load_config(None, ["method.name=iad", "method.teacher.run_dir=/x", "train.epochs=12"])


@pytest.mark.parametrize("name", ["ard", "rslad", "iad", "mtard", "adaad"])
def test_digits_presets_name_their_teachers(name):
    cfg = load_config(f"preset:digits_{name}")
    assert cfg.method.name == name and cfg.method.teacher.config == "preset:digits_robust_teacher"
    assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.method.attack.steps == 10
    if name == "mtard":
        assert cfg.method.clean_teacher.config == "preset:digits_clean_teacher"
