"""Training methods: loss terms, attack use, frozen sub-modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.config import load_config
from rkd.config.schema import TradesAttackConfig, TrainAttackConfig
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
