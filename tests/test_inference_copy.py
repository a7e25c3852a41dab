"""rkd.models.inference: the frozen, batch-norm-folded copy attacks and evaluation run on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.models import create_model
from rkd.models.inference import fold_batch_norms, frozen_copy, inference_copy


def _with_batch_statistics(model: nn.Module) -> nn.Module:
    """``model`` whose batch norms hold non-trivial running statistics and affine weights (as
    after training), in eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xx), y), xx)
    return g


@pytest.mark.parametrize("name, kw", [
    ("resnet18", {"width": 8}),
    ("resnet18", {"width": 8, "channels_last": False}),
    ("resnet50", {"width": 8, "layers": [1, 1, 1, 1]}),
])
def test_folded_copy_has_the_same_logits_and_input_gradients_and_no_batch_norm(name, kw):
    model = _with_batch_statistics(create_model(name, 10, **kw))
    torch.manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    copy = inference_copy(model, x[:8])
    assert _batch_norms(model) > 0 and _batch_norms(copy) == 0
    assert not any(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-4, atol=1e-5)
    # folding is exact algebra: in float64 the input gradients agree to the float32 rounding of
    # the folded weights (in float32 itself a ReLU input within rounding of 0 may flip, which
    # changes a gradient locally)
    model, copy, x = model.double(), copy.double(), x.double()
    got, ref = _input_grad(copy, x, y).flatten(1), _input_grad(model, x, y).flatten(1)
    assert ((got - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-5


def test_the_callers_model_is_untouched():
    model = _with_batch_statistics(create_model("resnet18", 10, width=8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_copy(model, torch.rand(4, 3, 32, 32))
    assert model.training and _batch_norms(model) > 0
    assert all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pre_activation_wide_resnet_keeps_its_logits():
    """In a pre-activation block a batch norm follows a conv among the children only where it
    normalises that conv's output; whatever is folded, the logits must not change."""
    model = _with_batch_statistics(create_model("wide_resnet", 10, depth=10, widen_factor=1))
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(inference_copy(model, x)(x), model(x), rtol=1e-4, atol=1e-5)


class _ConvThenBatchNormOfTheInput(nn.Module):
    """Registers a conv then a batch norm, but the batch norm normalises the input, not the
    conv's output: folding by registration order would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head((self.conv(x) + self.bn(x)).mean(dim=(2, 3)))


def test_a_fold_that_changes_the_logits_is_discarded():
    model = _with_batch_statistics(_ConvThenBatchNormOfTheInput())
    assert fold_batch_norms(frozen_copy(model)) == 1  # the naive fold happens ...
    x = torch.rand(8, 3, 8, 8)
    copy = inference_copy(model, x)
    assert _batch_norms(copy) == 1  # ... but the probe catches it: the unfolded copy is used
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x))
