"""Training methods: loss terms, attack use, frozen sub-modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.config import load_config
from rkd.config.schema import TradesAttackConfig, TrainAttackConfig
from rkd.losses import gap_l2_loss, soft_cross_entropy
from rkd.methods import (
    AdversarialTraining,
    DefensiveDistillation,
    Method,
    RobustKD,
    ShafahiTransfer,
    StandardTraining,
    StepOutput,
    Trades,
    build_method,
    freeze,
)
from rkd.models import create_model


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, width=4, layers=[1, 1, 1, 1])


def test_standard_is_cross_entropy(model, batch):
    x, y = batch
    out = StandardTraining(model).train().training_step(x, y)
    assert set(out.terms) == {"loss", "ce"}
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-4)


def test_adversarial_training_uses_worst_case_examples(model, batch):
    x, y = batch
    model.eval()  # fixed BN so clean and adversarial losses are comparable
    m = AdversarialTraining(model, TrainAttackConfig(norm="linf", eps=8 / 255, steps=5, mode="eval"))
    m.model.eval()
    out = m.training_step(x, y)
    assert set(out.terms) == {"loss", "ce_adv"}
    clean = F.cross_entropy(model(x), y).item()
    assert out.loss.item() > clean  # PGD raised the loss
    assert model.training is False  # attack restored the mode it found


def test_adversarial_attack_mode_option(model, batch):
    x, y = batch
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    m = AdversarialTraining(model, TrainAttackConfig(steps=2, mode="eval")).train()
    m.training_step(x, y)
    hook.remove()
    assert seen == [False, False, True]  # 2 attack steps in eval mode, the update in train mode


def test_trades_loss_terms(model, batch):
    x, y = batch
    torch.manual_seed(1)
    out = Trades(model, beta=6.0, attack=TradesAttackConfig(steps=2)).train().training_step(x, y)
    assert set(out.terms) == {"loss", "ce", "kl"} and out.terms["kl"].item() >= 0
    assert out.loss.item() == pytest.approx(out.terms["ce"].item() + 6.0 * out.terms["kl"].item(), rel=1e-5)


def test_trades_attack_maximises_kl_in_eval_mode(model, batch):
    x, _ = batch
    m = build_method(load_config("preset:digits_trades").method, model).train()
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    torch.manual_seed(0)
    x_adv = m.adversarial_examples(x)
    hook.remove()
    assert seen and not any(seen)  # every forward of the inner maximisation in eval mode
    assert model.training  # and the mode restored for the update
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl_adv = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean").item()
        kl_noise = F.kl_div(F.log_softmax(model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)), 1), p,
                            reduction="batchmean").item()
    assert kl_adv > 10 * kl_noise  # the attack moved far beyond its 0.001-noise start


def test_attacks_run_without_autocast(model, batch):
    x, y = batch
    dtypes = []
    hook = model.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    m = AdversarialTraining(model, TrainAttackConfig(steps=2)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.training_step(x, y)
    hook.remove()
    assert dtypes[:2] == [torch.float32, torch.float32]  # the two attack steps: full precision
    assert dtypes[2] == torch.bfloat16  # the update's forward keeps AMP


def test_build_method_from_config(model):
    cfg = load_config(None, ["method.name=trades", "method.beta=3", "method.attack.eps=4/255"])
    m = build_method(cfg.method, model)
    assert isinstance(m, Trades) and m.beta == 3.0 and m.attack.eps == pytest.approx(4 / 255)
    cfg = load_config(None, ["method.name=adversarial", "method.attack.norm=l2", "method.attack.eps=0.5"])
    m = build_method(cfg.method, model)
    assert isinstance(m, AdversarialTraining) and m.attack.norm == "l2"


class _WithTeacher(Method):
    frozen = ("teacher",)

    def __init__(self, model, teacher):
        super().__init__(model)
        self.teacher = freeze(teacher)
        self.head = nn.Linear(2, 2)

    def training_step(self, x, y):
        return StepOutput(loss=self.model(x).sum())


def test_frozen_teacher_is_not_trained_checkpointed_or_switched(model):
    teacher = create_model("resnet18", num_classes=10, width=4, layers=[1, 1, 1, 1])
    m = _WithTeacher(model, teacher).train()
    assert teacher.training is False and model.training is True
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) not in trainable for p in teacher.parameters())
    assert id(m.head.weight) in trainable
    state = m.trainable_state_dict()
    assert not any(k.startswith("teacher.") for k in state) and "head.weight" in state
    m.load_trainable_state_dict(state)  # round-trips without the teacher's keys
    with pytest.raises(KeyError):
        m.load_trainable_state_dict({k: v for k, v in state.items() if k != "head.weight"})


# ------------------------------------------------------------------ distillation methods
_TINY = ["model.width=4", "model.layers=[1,1,1,1]", "method.teacher.run_dir=/nonexistent"]


def _tiny_net(seed, num_classes=10):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=num_classes, width=4, layers=[1, 1, 1, 1])


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (on a busy 2-core machine the
    double backward of RobustKD ran 10x slower with 2 threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def small_batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)


def _method_cfg(name, *extra):
    # teacher.run_dir is only checked when the teacher is loaded, not at config load time
    return load_config(None, ["method.name=" + name, *_TINY, *extra]).method


def _backbone_state(net):
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name,cls", [("robust_kd", RobustKD), ("shafahi", ShafahiTransfer),
                                      ("defensive_distillation", DefensiveDistillation)])
def test_build_distillation_method_freezes_teacher(name, cls):
    """build_method freezes the teacher: no parameter requires grad, it stays in eval mode after
    method.train(), and it is neither optimised nor checkpointed with the student."""
    student, teacher = _tiny_net(0), _tiny_net(1)
    teacher.train()
    m = build_method(_method_cfg(name), student, teacher)
    assert isinstance(m, cls) and m.teacher is teacher and m.model is student
    m.train()
    assert student.training and not teacher.training
    assert all(not mod.training for mod in teacher.modules())  # BN of the teacher: running stats
    assert not any(p.requires_grad for p in teacher.parameters())
    trainable = {id(p) for p in m.trainable_parameters()}
    assert trainable == {id(p) for p in student.parameters()}
    assert not any(k.startswith("teacher.") for k in m.trainable_state_dict())
    with pytest.raises(ValueError, match="needs a teacher"):
        build_method(_method_cfg(name), _tiny_net(2))
    with pytest.raises(ValueError, match="does not use a teacher"):
        build_method(load_config(None, []).method, _tiny_net(2), _tiny_net(3))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["robust_kd", "shafahi", "defensive_distillation"])
def test_init_from_teacher_copies_backbone_and_gives_a_new_head(name):
    """init: teacher -> the student's backbone (weights and BN buffers) is the teacher's; its head
    is freshly initialised for the student's own classes (here 7 vs the teacher's 10)."""
    student, teacher = _tiny_net(0, num_classes=7), _tiny_net(1, num_classes=10)
    build_method(_method_cfg(name, "method.init=teacher"), student, teacher)
    s, t = _backbone_state(student), _backbone_state(teacher)
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    assert student.num_classes == 7 and student.fc.weight.shape == (7, teacher.num_features)
    assert teacher.fc.weight.shape == (10, teacher.num_features)  # the teacher keeps its own head
    # same number of classes: the head is new, not the teacher's
    student2, teacher2 = _tiny_net(0), _tiny_net(1)
    build_method(_method_cfg(name, "method.init=teacher"), student2, teacher2)
    assert not torch.equal(student2.fc.weight, teacher2.fc.weight)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["robust_kd", "shafahi", "defensive_distillation"])
def test_init_scratch_keeps_the_student_weights(name):
    """init: scratch -> the student keeps its own initialisation (differs from the teacher)."""
    student, teacher = _tiny_net(0), _tiny_net(1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    build_method(_method_cfg(name, "method.init=scratch"), student, teacher)
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    s, t = _backbone_state(student), _backbone_state(teacher)
    weights = [k for k in s if k.endswith("weight") and s[k].dim() > 1]  # conv weights: random init
    assert weights and all(not torch.equal(s[k], t[k]) for k in weights)


@pytest.mark.usefixtures("one_thread")
def test_defensive_distillation_defaults_to_scratch():
    """Papernot et al. train the student from scratch: that is the config default."""
    assert _method_cfg("defensive_distillation").init == "scratch"
    assert _method_cfg("robust_kd").init == "teacher" and _method_cfg("shafahi").init == "teacher"


def _robust_kd(beta, gamma, **kw):
    student, teacher = _tiny_net(0), _tiny_net(1)
    cfg = _method_cfg("robust_kd", f"method.beta={beta}", f"method.gamma={gamma}",
                      *[f"method.{k}={v}" for k, v in kw.items()])
    return build_method(cfg, student, teacher).train()


@pytest.mark.usefixtures("one_thread")
def test_robust_kd_terms_and_total(small_batch):
    """L = CE + beta * L_fm + gamma * L_J with all three terms logged; the loss is finite and
    after backward the student has gradients and the teacher none."""
    x, y = small_batch
    m = _robust_kd(2.0, 3.0)
    torch.manual_seed(0)
    out = m.training_step(x, y)
    assert set(out.terms) == {"loss", "ce", "fm", "jacobian"}
    t = {k: v.item() for k, v in out.terms.items()}
    assert t["fm"] > 0 and t["jacobian"] > 0
    assert out.loss.item() == pytest.approx(t["ce"] + 2.0 * t["fm"] + 3.0 * t["jacobian"], rel=1e-5)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.model.parameters())


@pytest.mark.usefixtures("one_thread")
def test_robust_kd_ablations_reduce_the_loss(small_batch, monkeypatch):
    """beta = 0 drops L_fm from the loss (it is still logged), gamma = 0 drops L_J and no input
    Jacobian is computed at all; beta = gamma = 0 is plain cross-entropy."""
    import rkd.methods.robust_kd as rkd_mod

    x, y = small_batch
    calls = []
    real = rkd_mod.jacobian_projection_loss
    monkeypatch.setattr(rkd_mod, "jacobian_projection_loss", lambda *a, **k: calls.append(1) or real(*a, **k))

    out = _robust_kd(0, 0).training_step(x, y)
    assert set(out.terms) == {"loss", "ce", "fm"} and not calls
    assert out.loss.item() == out.terms["ce"].item()
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-6)
    assert out.terms["fm"].item() > 0  # logged though not trained on

    out = _robust_kd(2.0, 0).training_step(x, y)
    assert set(out.terms) == {"loss", "ce", "fm"} and not calls
    assert out.loss.item() == pytest.approx(out.terms["ce"].item() + 2.0 * out.terms["fm"].item(), rel=1e-6)

    m = _robust_kd(0, 3.0)
    out = m.training_step(x, y)
    assert set(out.terms) == {"loss", "ce", "fm", "jacobian"} and calls
    assert out.loss.item() == pytest.approx(out.terms["ce"].item() + 3.0 * out.terms["jacobian"].item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert torch.isfinite(out.loss)


@pytest.mark.usefixtures("one_thread")
def test_robust_kd_uses_the_configured_stages(small_batch):
    """stages=[2, 4] feed L_fm and jacobian_stages=[1, 3] feed L_J (1-based): the logged terms equal
    the losses recomputed by hand on exactly those stage maps (same RNG draws for the v's)."""
    from rkd.losses import feature_map_loss, jacobian_projection_loss

    x, y = small_batch
    student, teacher = _tiny_net(0), _tiny_net(1)
    cfg = _method_cfg("robust_kd", "method.init=scratch", "method.stages=[2,4]", "method.jacobian_stages=[1,3]",
                      "method.feature_distance=mse", "method.n_proj=2")
    m = build_method(cfg, student, teacher).eval()
    assert m.stages == [2, 4] and m.jacobian_stages == [1, 3]
    torch.manual_seed(3)
    out = m.training_step(x, y)
    xr = x.clone().requires_grad_(True)
    fs, ft = student.forward_intermediates(xr), teacher.forward_intermediates(xr)
    fm = feature_map_loss([fs[1], fs[3]], [ft[1], ft[3]], "mse").item()
    torch.manual_seed(3)
    jl = jacobian_projection_loss(xr, [fs[0], fs[2]], [ft[0], ft[2]], n_proj=2, estimator=m.jacobian_estimator).item()
    assert out.terms["fm"].item() == pytest.approx(fm, rel=1e-5)
    assert out.terms["jacobian"].item() == pytest.approx(jl, rel=1e-4)
    wrong = feature_map_loss([fs[0], fs[2]], [ft[0], ft[2]], "mse").item()
    assert wrong != pytest.approx(fm, rel=1e-3)  # the stages are distinguishable


@pytest.mark.usefixtures("one_thread")
def test_robust_kd_with_teacher_init_has_zero_feature_loss_at_start(small_batch):
    """Student initialised from the teacher, both in eval mode: identical stage maps, so L_fm and
    L_J are zero (up to rounding) -- the terms compare the right stages of the right networks."""
    x, y = small_batch
    student, teacher = _tiny_net(0), _tiny_net(1)
    m = build_method(_method_cfg("robust_kd", "method.init=teacher"), student, teacher).eval()
    out = m.training_step(x, y)
    assert out.terms["fm"].item() < 1e-5
    assert out.terms["jacobian"].item() < 1e-8


@pytest.mark.usefixtures("one_thread")
def test_shafahi_loss_is_ce_plus_gap_l2(small_batch):
    """L = CE + lam * ||GAP(f_S) - GAP(f_T)||^2 on the last stage."""
    x, y = small_batch
    student, teacher = _tiny_net(0), _tiny_net(1)
    m = build_method(_method_cfg("shafahi", "method.lam=0.7", "method.init=scratch"), student, teacher).eval()
    out = m.training_step(x, y)
    with torch.no_grad():
        gap = gap_l2_loss(student.forward_features(x), teacher.forward_features(x)).item()
        ce = F.cross_entropy(student(x), y).item()
    assert out.terms["gap_l2"].item() == pytest.approx(gap, rel=1e-5) and gap > 0
    assert out.loss.item() == pytest.approx(ce + 0.7 * gap, rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_defensive_distillation_forward_is_t1_and_loss_is_soft_ce(small_batch):
    """The student is tested at T = 1 (method(x) are the raw logits) and trained on the soft
    cross-entropy at T against the teacher's soft labels."""
    x, y = small_batch
    student, teacher = _tiny_net(0), _tiny_net(1)
    m = build_method(_method_cfg("defensive_distillation", "method.temperature=5"), student, teacher)
    assert isinstance(m, DefensiveDistillation) and m.temperature == 5.0
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), student(x))
        expected = soft_cross_entropy(student(x), teacher(x), 5.0).item()
        assert expected != pytest.approx(soft_cross_entropy(student(x), teacher(x), 1.0).item(), rel=1e-3)
    out = m.training_step(x, y)
    assert set(out.terms) == {"loss", "soft_ce"}
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_standard_training_at_temperature(model, small_batch, T):
    """StandardTraining(temperature=T) minimises CE(z / T, y); forward stays at T = 1."""
    x, y = small_batch
    m = StandardTraining(model, temperature=T).eval()
    out = m.training_step(x, y)
    with torch.no_grad():
        z = model(x)
    assert out.loss.item() == pytest.approx(F.cross_entropy(z / T, y).item(), rel=1e-5)
    assert torch.equal(m(x), z)
    cfg = load_config(None, [f"method.temperature={T}"])
    assert build_method(cfg.method, model).temperature == T


# ---- MACD and MAE training (issue 4) ---------------------------------------------------------
from rkd.methods import Macd, MaeTraining  # noqa: E402


def _mae_teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny", embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2,
                        fusion="concat_linear")


def _paired(small=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(small, 3, 32, 32, generator=g)
    adv = (clean + 0.03 * torch.randn(small, 3, 32, 32, generator=g)).clamp(0, 1)
    return clean, adv, torch.randint(0, 10, (small,), generator=g)


def test_macd_loss_is_ce_plus_kl_plus_normalised_l2(model):
    from rkd.losses import macd_robust_loss

    teacher = freeze(_mae_teacher())
    m = Macd(model, teacher, student_patch=8, student_mask_ratio=0.5, teacher_mask_ratio=0.75,
             projection="fixed").train()
    clean, adv, y = _paired()
    torch.manual_seed(3)
    out = m.training_step(torch.cat([clean, adv], 1), y)
    assert set(out.terms) == {"loss", "ce", "robust", "kl", "nl2"}
    assert out.loss.item() == pytest.approx(out.terms["ce"].item() + out.terms["robust"].item(), rel=1e-5)
    assert out.terms["robust"].item() == pytest.approx(out.terms["kl"].item() + out.terms["nl2"].item(), rel=1e-5)
    # recompute by hand with the same random draws: the teacher's mask first (the target is
    # computed before the student's forward), then the student's
    from rkd.data.masking import random_patch_mask

    torch.manual_seed(3)
    with torch.no_grad():
        t = teacher(adv, mask_ratio=0.75) @ m.teacher_proj  # 16 -> 32 features
    masked, mask = random_patch_mask(clean, 8, 0.5)
    assert (mask.flatten(1).sum(1) == 8).all()  # 16 squares of 8 px, half hidden
    f = model.forward_features(masked)
    s = model.forward_head(f, pre_logits=True)
    robust, _ = macd_robust_loss(s, t)
    assert out.terms["robust"].item() == pytest.approx(robust.item(), rel=1e-4)
    assert out.terms["ce"].item() == pytest.approx(F.cross_entropy(model.forward_head(f), y).item(), rel=1e-4)


def test_macd_trains_student_not_teacher_and_fixed_projection_is_saved(model):
    teacher = freeze(_mae_teacher())
    m = Macd(model, teacher, student_patch=4, projection="fixed").train()
    assert teacher.training is False and all(not p.requires_grad for p in teacher.parameters())
    clean, adv, y = _paired()
    m.training_step(torch.cat([clean, adv], 1), y).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    state = m.trainable_state_dict()
    assert "teacher_proj" in state and not any(k.startswith("teacher.") for k in state)
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in model.parameters()}


def test_macd_learned_projection_maps_the_student_and_is_trained(model):
    teacher = freeze(_mae_teacher())
    m = Macd(model, teacher, student_patch=4).train()  # learned is the default
    assert m.projection == "learned" and not hasattr(m, "teacher_proj")
    assert isinstance(m.student_proj, nn.Linear) and m.student_proj.weight.shape == (16, model.num_features)
    clean, adv, y = _paired()
    m.training_step(torch.cat([clean, adv], 1), y).loss.backward()
    assert m.student_proj.weight.grad is not None and m.student_proj.weight.grad.abs().sum() > 0
    assert "student_proj.weight" in m.trainable_state_dict()
    assert {id(p) for p in m.student_proj.parameters()} <= {id(p) for p in m.trainable_parameters()}


def test_macd_ablations_change_what_each_side_sees(model, monkeypatch):
    teacher = freeze(_mae_teacher())
    seen = {}
    real_forward = type(teacher).forward

    def spy(self, imgs, mask_ratio=0.75, generator=None):
        seen["teacher_in"], seen["ratio"] = imgs.clone(), mask_ratio
        return real_forward(self, imgs, mask_ratio, generator)

    monkeypatch.setattr(type(teacher), "forward", spy)
    clean, adv, y = _paired()
    Macd(model, teacher, student_patch=4).training_step(torch.cat([clean, adv], 1), y)
    assert torch.equal(seen["teacher_in"], adv) and seen["ratio"] == 0.75
    Macd(model, teacher, adversarial=False, student_patch=4).training_step(clean, y)  # Table 7: clean batches
    assert torch.equal(seen["teacher_in"], clean)
    Macd(model, teacher, masking=False, student_patch=4).training_step(torch.cat([clean, adv], 1), y)  # Table 8
    assert seen["ratio"] == 0.0
    selfm = Macd(model, None, distill="self", student_patch=4)  # Table 9: no MAE teacher
    out = selfm.training_step(torch.cat([clean, adv], 1), y)
    assert selfm.frozen == () and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="paired"):
        Macd(model, teacher, student_patch=4).training_step(torch.rand(2, 3, 32, 32), y[:2])


def test_mae_training_stages(model):
    teacher = _mae_teacher()
    x = torch.rand(4, 3, 32, 32)
    rec = MaeTraining(teacher, stage="reconstruction").train().training_step(x, None)
    assert set(rec.terms) == {"loss", "recon"} and rec.logits is None
    rec.loss.backward()
    assert all(p.grad is None for p in teacher.feature_module.parameters())  # stage 1 leaves the module alone
    teacher.zero_grad()
    feat = MaeTraining(teacher, stage="feature").train().training_step(x, None)
    assert set(feat.terms) == {"loss", "feature_mse", "recon"}
    feat.loss.backward()
    assert all(p.grad is not None for p in teacher.feature_module.parameters())
    with pytest.raises(TypeError, match="MAE"):
        MaeTraining(model)
