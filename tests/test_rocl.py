"""RoCL: NT-Xent by hand, the batched views, the instance-wise attack, the training step, and
the linear evaluation of the frozen encoder (rkd/losses/nt_xent.py, rkd/data/contrastive_views.py,
rkd/methods/rocl.py, rkd/methods/linear_eval.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rkd.config import ConfigError, load_config
from rkd.data.contrastive_views import ViewParams, random_resized_crop, random_view
from rkd.losses import nt_xent
from rkd.methods import LinearEval, Rocl, build_method
from rkd.methods.rocl import RoclAttackConfig
from rkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0):
    """NCHW: torch 2.14.1's oneDNN backward of a channels-last 1x1 stride-2 convolution with 4
    input channels corrupts the heap on one CPU thread (README, "Numerics and speed settings")."""
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=10, width=4, layers=[1, 1, 1, 1], channels_last=False)


def _nt_xent_by_hand(views, tau):
    z = [v / v.norm() for v in torch.cat(views)]
    n, total = views[0].shape[0], 0.0
    for a in range(len(z)):
        denom = sum(math.exp(float(z[a] @ z[j]) / tau) for j in range(len(z)) if j != a)
        for p in range(len(z)):
            if p != a and p % n == a % n:
                total += -math.log(math.exp(float(z[a] @ z[p]) / tau) / denom)
    return total / len(z)


@pytest.mark.parametrize("n_views", [2, 3])
def test_nt_xent_by_hand(n_views):
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(n_views)]
    assert nt_xent(views, 0.5).item() == pytest.approx(_nt_xent_by_hand(views, 0.5))


def test_nt_xent_is_lower_for_aligned_views_and_detach_keys_halves_the_gradient_paths():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 6, generator=g)
    assert nt_xent([a, a + 0.01 * torch.randn(8, 6, generator=g)]) < nt_xent([a, torch.randn(8, 6, generator=g)])
    x = torch.randn(4, 3, generator=g, requires_grad=True)
    y = torch.randn(4, 3, generator=g)
    (g_detached,) = torch.autograd.grad(nt_xent([x, y], detach_keys=True), x)
    (g_full,) = torch.autograd.grad(nt_xent([x, y], detach_keys=False), x)
    assert not torch.allclose(g_detached, g_full)
    with pytest.raises(ValueError, match="two"):
        nt_xent([a])


def test_views_are_per_image_in_range_and_the_full_crop_is_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    assert torch.allclose(random_resized_crop(x, (1.0, 1.0), g, ratio=(1.0, 1.0)), x, atol=1e-5)
    v = random_view(x, ViewParams(), torch.Generator().manual_seed(1))
    assert v.shape == x.shape and v.min() >= 0 and v.max() <= 1
    w = random_view(x, ViewParams(), torch.Generator().manual_seed(2))
    assert not torch.allclose(v, w)
    same = random_view(x.repeat(2, 1, 1, 1), ViewParams(), torch.Generator().manual_seed(3))
    assert not torch.allclose(same[:6], same[6:])  # each image gets its own parameters


def test_greyscale_and_no_colour_ops_on_one_channel():
    x = torch.rand(4, 3, 8, 8)
    gray = random_view(x, ViewParams(crop_scale=(1.0, 1.0), flip=False, p_jitter=0.0, p_gray=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    one = torch.rand(4, 1, 8, 8)
    assert random_view(one, ViewParams(crop_scale=(1.0, 1.0), flip=False)).shape == one.shape


@pytest.fixture
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_instance_attack_raises_the_contrastive_loss_inside_the_ball(images):
    m = Rocl(_net(), hidden_dim=16, projection_dim=8, attack=RoclAttackConfig(steps=5)).train()
    t1, t2 = random_view(images), random_view(images)
    torch.manual_seed(0)
    adv = m.instance_attack(t1, t2)
    assert (adv - t1).abs().max() <= 8 / 255 + 1e-6
    assert m.model.training and m.projector.training  # restored after the eval-mode attack
    m.eval()
    m.instance_attack(t1, t2)
    assert not m.model.training and not m.projector.training  # and an eval-mode caller stays so
    with torch.no_grad(), torch.autograd.set_grad_enabled(False):
        m.eval()
        z2 = m.embed(t2)
        assert m.contrastive(m.embed(adv), z2) > m.contrastive(m.embed(t1), z2)


def test_rocl_step_trains_encoder_and_projector_without_labels(images):
    m = Rocl(_net(), hidden_dim=16, projection_dim=8, attack=RoclAttackConfig(steps=1)).train()
    out = m.training_step(images, torch.zeros(6, dtype=torch.long))
    expected = out.terms["nt_xent"] + out.terms["nt_xent_adv"] / 256
    assert out.loss.item() == pytest.approx(expected.item()) and out.logits is None
    out.loss.backward()
    assert all(p.grad is not None for p in m.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.parameters())
    keys = set(m.trainable_state_dict())
    assert any(k.startswith("projector.") for k in keys)
    assert all(k.split(".")[0] in ("model", "projector") for k in keys)
    # labels are unused: another labelling gives the same loss from the same RNG state (in eval
    # mode, where the step's forward passes leave the BatchNorm statistics the attack uses alone)
    m.eval()
    torch.manual_seed(0)
    a = m.training_step(images, torch.zeros(6, dtype=torch.long)).loss.item()
    torch.manual_seed(0)
    assert m.training_step(images, torch.arange(6)).loss.item() == pytest.approx(a)


def test_rocl_config_needs_eval_off():
    with pytest.raises(ConfigError, match="eval.enabled: false"):
        load_config(None, ["method.name=rocl"])
    cfg = load_config("preset:digits_rocl")
    assert cfg.method.view_params().flip is False and cfg.method.view_params().crop_scale == (0.2, 1.0)


def test_linear_eval_trains_only_the_head_on_the_frozen_encoder(images):
    encoder, student = _net(1), _net(2)
    cfg = load_config(None, ["method.name=linear_eval", "method.encoder.run_dir=/x"]).method
    m = build_method(cfg, student, models={"encoder": encoder})
    assert isinstance(m, LinearEval)
    head = {id(p) for p in student.get_classifier().parameters()}
    assert {id(p) for p in m.trainable_parameters()} == head
    enc_state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(student.state_dict()[k], v) for k, v in enc_state.items())
    m.train()
    assert student.get_classifier().training
    assert all(not mod.training for n, mod in student.named_modules() if n and not n.startswith("fc"))
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    out = m.training_step(images, torch.arange(6) % 10)
    out.loss.backward()
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())  # BN statistics fixed


def test_linear_eval_adversarial_and_finetune_options(images, monkeypatch):
    import rkd.methods.adversarial as adv

    calls = []
    monkeypatch.setattr(adv, "pgd", lambda model, x, y, **kw: calls.append(kw) or x)
    cfg = load_config(None, ["method.name=linear_eval", "method.encoder.run_dir=/x", "method.adversarial=true",
                             "method.finetune=true"]).method
    m = build_method(cfg, _net(2), models={"encoder": _net(1)}).train()
    m.training_step(images, torch.arange(6) % 10)
    assert calls and calls[0]["steps"] == 10 and calls[0]["step_size"] == pytest.approx(0.007)
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.model.parameters()}
    with pytest.raises(ConfigError, match="adversarial: true only"):
        load_config(None, ["method.name=linear_eval", "method.encoder.run_dir=/x", "method.attack.steps=3"])
