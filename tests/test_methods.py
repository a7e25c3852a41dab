"""Training methods: loss terms, attack use, frozen sub-modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.config import load_config
from rkd.methods import AdversarialTraining, Method, StandardTraining, StepOutput, Trades, build_method, freeze
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
    m = AdversarialTraining(model, norm="linf", eps=8 / 255, steps=5, mode="eval")
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
    m = AdversarialTraining(model, steps=2, mode="eval").train()
    m.training_step(x, y)
    hook.remove()
    assert seen == [False, False, True]  # 2 attack steps in eval mode, the update in train mode


def test_trades_beta_zero_is_clean_ce_and_kl_nonnegative(model, batch):
    x, y = batch
    torch.manual_seed(1)
    out0 = Trades(model, beta=0.0, steps=2).train().training_step(x, y)
    assert out0.loss.item() == pytest.approx(out0.terms["ce"].item())
    torch.manual_seed(1)
    out = Trades(model, beta=6.0, steps=2).train().training_step(x, y)
    assert out.terms["kl"].item() >= 0
    assert out.loss.item() == pytest.approx(out.terms["ce"].item() + 6.0 * out.terms["kl"].item(), rel=1e-5)


def test_build_method_from_config(model):
    cfg = load_config(None, ["method.name=trades", "method.beta=3", "method.attack.eps=4/255"])
    m = build_method(cfg.method, model)
    assert isinstance(m, Trades) and m.beta == 3.0 and m.attack["eps"] == pytest.approx(4 / 255)
    cfg = load_config(None, ["method.name=adversarial", "method.attack.norm=l2", "method.attack.eps=0.5"])
    m = build_method(cfg.method, model)
    assert isinstance(m, AdversarialTraining) and m.attack["norm"] == "l2"


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
