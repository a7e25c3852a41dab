"""MACD's fidelity (rkd/methods/macd.py, rkd/losses/contrastive.py, the feature-learning module
of rkd/models/mae.py): a reachable distillation target, a feature module that learns, the
paper's open choices as options, and a self-distillation target that leaves no trace."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.data.masking import random_patch_mask
from rkd.losses.contrastive import feature_kl, normalized_l2
from rkd.methods import Macd
from rkd.methods.base import freeze
from rkd.models import create_model
from rkd.models.mae import FeatureLearningModule

DT = torch.float64


@pytest.fixture
def student():
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, width=2, layers=[1, 1, 1, 1])  # 16 features


def _teacher(dim=16):
    torch.manual_seed(1)
    return freeze(create_model("mae_vit_tiny", embed_dim=dim, depth=1, num_heads=2, decoder_embed_dim=8,
                               decoder_num_heads=2, fusion="gated"))


def _fit(params, loss_fn, steps=400, lr=0.05):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    return loss_fn().item()


# ---- 1: the normalised-L2 target is reachable --------------------------------------------------
def test_normalised_l2_reaches_zero_through_the_learned_projection_not_without_it(student):
    """Post-ReLU student features S >= 0 against signed (LayerNorm-like) teacher features T at
    equal widths: the default learned projection drives the normalised-L2 term to ~0; without a
    student-side map even the best S >= 0 (optimised freely) stays near the ~0.6 floor."""
    g = torch.Generator().manual_seed(0)
    n, d = 12, student.num_features
    t = F.layer_norm(torch.randn(n, d, generator=g, dtype=DT), (d,))
    s = F.relu(torch.randn(n, d, generator=g, dtype=DT))  # what a pooled post-ReLU backbone gives
    m = Macd(student, _teacher(d), student_patch=4)  # projection: learned (default), equal widths
    assert isinstance(m.student_proj, nn.Linear) and m.student_proj.in_features == m.student_proj.out_features == d
    proj = m.student_proj.to(DT)
    reached = _fit(proj.parameters(), lambda: normalized_l2(proj(s), t))
    assert reached < 0.01
    free = torch.randn(n, d, generator=g, dtype=DT, requires_grad=True)  # S = relu(free) >= 0
    floor = _fit([free], lambda: normalized_l2(F.relu(free), t))
    assert floor > 0.4
    assert isinstance(Macd(student, _teacher(d), student_patch=4, projection="fixed").student_proj, nn.Identity)


# ---- 2: the feature-learning module learns ----------------------------------------------------
def test_gated_fusion_changes_the_features_at_initialisation_and_its_gate_learns():
    torch.manual_seed(0)
    d = 64
    f_v, f_e = F.layer_norm(torch.randn(4, 17, d), (d,)), F.layer_norm(torch.randn(4, 65, d), (d,))
    change = lambda fm: ((fm(f_v, f_e) - f_v).norm() / f_v.norm()).item()  # noqa: E731
    assert change(FeatureLearningModule(d, fusion="add")) < 0.05  # A ~ 1/D: nearly the identity
    assert change(FeatureLearningModule(d, fusion="concat_linear")) < 1e-6  # starts as the identity
    gated = FeatureLearningModule(d, fusion="gated")
    assert change(gated) > 0.5
    a = gated.attention(f_v, f_e)
    assert torch.allclose(gated(f_v, f_e), f_v + d * a * f_v, atol=1e-6)  # gate 1: F_v + (D A) F_v
    F.mse_loss(gated(f_v, f_e), f_e[:, :17]).backward()
    assert gated.gate.grad is not None and gated.gate.grad.abs().sum() > 0


def test_gated_fusion_gets_gradients_through_the_mae_feature_loss():
    teacher = create_model("mae_vit_tiny", embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8,
                           decoder_num_heads=2, fusion="gated")
    total, _ = teacher.mae_loss(torch.rand(3, 3, 32, 32), mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    total.backward()
    assert teacher.feature_module.gate.grad.abs().sum() > 0


# ---- 3: both KL directions --------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_both_kl_directions_match_hand_values(tau):
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], dtype=DT)
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]], dtype=DT)

    def kl(p, q):  # sum_i p_i log(p_i / q_i), rows averaged
        return sum(sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)) / len(p)

    soft = lambda z: [[math.exp(v / tau) / sum(math.exp(u / tau) for u in row) for v in row]  # noqa: E731
                      for row in z.tolist()]
    p_s, p_t = soft(s), soft(t)
    assert feature_kl(s, t, tau, "teacher_target").item() == pytest.approx(kl(p_t, p_s), rel=1e-12)
    assert feature_kl(s, t, tau, "student_target").item() == pytest.approx(kl(p_s, p_t), rel=1e-12)
    assert kl(p_t, p_s) != pytest.approx(kl(p_s, p_t), rel=1e-3)  # the choice matters
    with pytest.raises(ValueError, match="direction"):
        feature_kl(s, t, tau, "symmetric")


def test_student_target_kl_trains_the_student_only(student):
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    feature_kl(s, t, 1.0, "student_target").backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    m = Macd(student, _teacher(), student_patch=4, kl_direction="student_target").train()
    clean = torch.rand(4, 3, 32, 32)
    out = m.training_step(torch.cat([clean, clean], 1), torch.arange(4))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="kl_direction"):
        Macd(student, _teacher(), kl_direction="both")


# ---- 4: distill self leaves the batch-norm statistics alone ------------------------------------
def test_self_distillation_target_leaves_batchnorm_statistics_untouched(student):
    m = Macd(student, None, distill="self", student_patch=4).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    adv = torch.rand(6, 3, 32, 32)
    t = m.target(adv)
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert student.training  # still in train mode: the target used the batch's statistics
    with torch.no_grad():
        expected = student.forward_head(student.forward_features(adv), pre_logits=True)
    assert torch.allclose(t, expected)
    # a plain train-mode forward does move them (the check above is not vacuous)
    bn = next(k for k in before if k.endswith("running_mean"))
    assert not torch.equal(before[bn], student.state_dict()[bn])


def test_self_distillation_trains_through_a_whole_step(student):
    # the target's forward restores batch-norm buffers in place: the step's own graph must not
    # have saved them yet, or backward fails (the Table 9 row crashed this way)
    m = Macd(student, None, distill="self", student_patch=4).train()
    x = torch.rand(6, 3, 32, 32)
    out = m.training_step(torch.cat([x, (x + 0.03).clamp(0, 1)], 1), torch.arange(6) % 10)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


# ---- 5: what the student's hidden squares hold -------------------------------------------------
def test_mask_value_zero_or_the_normalisation_mean(student):
    x = torch.rand(3, 3, 32, 32)
    masked, mask = random_patch_mask(x, 8, 0.5, torch.Generator().manual_seed(0))
    hidden = mask.bool().repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1).expand_as(x)
    assert (masked[hidden] == 0).all() and torch.equal(masked[~hidden], x[~hidden])
    mean = student.normalize.mean
    filled, mask2 = random_patch_mask(x, 8, 0.5, torch.Generator().manual_seed(0), fill=mean)
    assert torch.equal(mask, mask2) and torch.equal(filled[~hidden], x[~hidden])
    normalised = student.normalize(filled)
    assert normalised[hidden].abs().max() < 1e-6  # zero in the normalised input
    m = Macd(student, _teacher(), student_patch=8, mask_value="mean")
    assert torch.equal(m.mask_fill(), mean)
    assert Macd(student, _teacher(), student_patch=8).mask_fill() == 0.0
    with pytest.raises(ValueError, match="mask_value"):
        Macd(student, _teacher(), mask_value="noise")
