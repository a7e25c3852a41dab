"""Models: feature-tap shapes, interface identities, normalisation inside, heads, registry."""

from __future__ import annotations

import pytest
import torch

from rkd.models import (
    NORMALIZATION_STATS,
    InputNormalize,
    create_model,
    get_normalization,
    list_models,
    register_model,
)
from rkd.models.torchvision_adapters import load_state_dict_file


def _tiny(name: str, num_classes: int = 10, **kw):
    if name == "resnet18":
        kw.setdefault("width", 8)
    elif name == "resnet50":
        kw.setdefault("width", 8)
        kw.setdefault("layers", [1, 1, 1, 1])
    elif name == "wide_resnet":
        kw.setdefault("depth", 10)
        kw.setdefault("widen_factor", 1)
    model = create_model(name, num_classes, **kw)
    return model.eval()


TINY = ["resnet18", "resnet50", "wide_resnet"]


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 32)


# ---- registry -----------------------------------------------------------------------------


def test_registry_names_and_unknown():
    names = list_models()
    for n in ["resnet18", "resnet50", "wide_resnet", "tv_resnet50", "tv_wide_resnet50_2"]:
        assert n in names
    with pytest.raises(ValueError) as e:
        create_model("resnet_nope", 10)
    assert "resnet18" in str(e.value) and "tv_resnet50" in str(e.value)


def test_register_model_decorator_extends_registry():
    from rkd.models import registry

    try:

        @register_model(name="_test_tiny_model")
        def _ctor(num_classes=3):
            return torch.nn.Linear(4, num_classes)

        assert "_test_tiny_model" in list_models()
        assert create_model("_test_tiny_model", 5).out_features == 5
        with pytest.raises(ValueError):  # same name, another function
            register_model(name="_test_tiny_model")(lambda num_classes=3: None)
    finally:
        registry._MODELS.pop("_test_tiny_model", None)
    assert "_test_tiny_model" not in list_models()


# ---- shapes ------------------------------------------------------------------------------------


def test_resnet18_stage_shapes(x):
    m = _tiny("resnet18")
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert m.stage_channels == [8, 16, 32, 64] and m.num_stages == 4 and m.num_features == 64
    assert m(x).shape == (2, 10)


def test_stem_stride_two_halves_every_stage_side_and_keeps_the_interface(x):
    m = _tiny("resnet18", stem_stride=2)
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert m(x).shape == (2, 10)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        _tiny("resnet18", stem_stride=4)


def test_resnet50_bottleneck_expansion(x):
    m = _tiny("resnet50")
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert m.stage_channels == [32, 64, 128, 256] and m.num_features == 256
    assert m.forward_head(feats[-1], pre_logits=True).shape == (2, 256)


def test_full_depth_resnet_layer_counts():
    m18 = create_model("resnet18", 10, width=4)
    m50 = create_model("resnet50", 10, width=4)
    assert [len(s) for s in m18.get_stages()] == [2, 2, 2, 2]
    assert [len(s) for s in m50.get_stages()] == [3, 4, 6, 3]


def test_wide_resnet_shapes_and_depth_check(x):
    m = _tiny("wide_resnet")
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert m.num_stages == 3 and m.num_features == 64
    m2 = create_model("wide_resnet", 10, depth=16, widen_factor=2, width=4)
    assert m2.stage_channels == [8, 16, 32]
    assert [len(s) for s in m2.get_stages()] == [2, 2, 4]  # layer3 = 2 blocks + final BN + ReLU
    with pytest.raises(ValueError):
        create_model("wide_resnet", 10, depth=12)


# ---- interface identities ----------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_forward_identities(name, x):
    m = _tiny(name)
    with torch.no_grad():
        logits = m(x)
        f = m.forward_features(x)
        feats, logits2 = m.forward_intermediates(x, return_logits=True)
        assert torch.allclose(logits, m.forward_head(f), atol=1e-6)
        assert torch.allclose(feats[-1], f, atol=1e-6)
        assert torch.allclose(logits2, logits, atol=1e-6)
        assert len(feats) == m.num_stages
        assert [t.shape[1] for t in feats] == m.stage_channels


@pytest.mark.parametrize("name", TINY)
def test_normalisation_is_inside(name, x):
    m = _tiny(name, mean="cifar10")
    mean, std = get_normalization("cifar10")
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = m(x)
        # the same network without normalisation, fed manually normalised input
        manual_in = (x - mean_t) / std_t
        m.normalize.mean.zero_()
        m.normalize.std.fill_(1.0)
        manual = m(manual_in)
        assert torch.allclose(out, manual, atol=1e-5)
        # changing the mean buffer changes the output
        m.normalize.mean.fill_(0.5)
        assert not torch.allclose(m(manual_in), manual, atol=1e-4)
    assert "normalize.mean" in m.state_dict()


def test_input_normalize_module_and_stats():
    norm = InputNormalize((0.5, 0.25, 0.0), (0.5, 0.5, 1.0))
    x = torch.ones(1, 3, 2, 2)
    y = norm(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([1.0, 1.5, 1.0]))
    for name in ["cifar10", "cifar100", "svhn", "imagenet", "digits"]:
        mean, std = NORMALIZATION_STATS[name]
        assert len(mean) == len(std) == 3 and all(s > 0 for s in std)
    with pytest.raises(ValueError):
        get_normalization("nope")
    with pytest.raises(ValueError):
        InputNormalize((0.5,), (0.0,))
    m = create_model("resnet18", 10, width=4, layers=[1, 1, 1, 1], mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert torch.allclose(m.normalize.std.flatten(), torch.tensor([1.0, 2.0, 3.0]))


def test_reset_classifier_keeps_backbone(x):
    m = _tiny("resnet18", num_classes=10)
    backbone = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("fc.")}
    with torch.no_grad():
        f_before = m.forward_features(x)
    m.reset_classifier(7)
    assert m.num_classes == 7 and m(x).shape == (2, 7)
    after = m.state_dict()
    for k, v in backbone.items():
        assert torch.equal(after[k], v), k
    with torch.no_grad():
        assert torch.allclose(m.forward_features(x), f_before)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


def test_student_from_teacher_other_dataset():
    teacher = _tiny("resnet18", num_classes=100)
    student = _tiny("resnet18", num_classes=100)
    student.load_state_dict(teacher.state_dict())
    student.reset_classifier(10)
    assert student.fc.out_features == 10
    assert torch.equal(student.layer4[0].conv1.weight, teacher.layer4[0].conv1.weight)


@pytest.mark.parametrize("name", TINY)
def test_gradient_flows_to_input(name, x):
    m = _tiny(name)
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([1, 2]))
    (g,) = torch.autograd.grad(loss, x)
    assert g.shape == x.shape and g.abs().sum() > 0
    # double backprop through intermediate features (Robust-KD's Jacobian loss needs it)
    m.train()
    x2 = x.detach().clone().requires_grad_(True)
    f = m.forward_intermediates(x2)[1]
    (j,) = torch.autograd.grad((f * torch.randn_like(f)).sum(), x2, create_graph=True)
    j.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_train_mode_backward_and_dropout(x):
    m = create_model("wide_resnet", 10, depth=10, widen_factor=1, dropout=0.3, drop_rate=0.2).train()
    m(x).sum().backward()
    assert m.conv1.weight.grad is not None


def test_unknown_kwarg_raises():
    with pytest.raises(TypeError):
        create_model("resnet18", 10, widht=8)


# ---- torchvision adapters ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tv_resnet50", "tv_wide_resnet50_2"])
def test_torchvision_adapters(name):
    torch.manual_seed(0)
    m = create_model(name, 10).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        feats, logits = m.forward_intermediates(x, return_logits=True)
    assert [tuple(f.shape) for f in feats] == [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]
    assert logits.shape == (1, 10)
    assert m.stage_channels == [256, 512, 1024, 2048] and m.num_features == 2048
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor(get_normalization("imagenet")[0]))
    with torch.no_grad():
        assert torch.allclose(m.forward_head(feats[-1]), logits, atol=1e-5)
    m.reset_classifier(5)
    assert m.net.fc.out_features == 5 and m.num_classes == 5


def test_torchvision_adapter_weights_path_and_resize(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None, num_classes=1000)
    path = tmp_path / "rn50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    assert "conv1.weight" in load_state_dict_file(path)
    m = create_model("tv_resnet50", 10, weights_path=str(path), resize_to=64).eval()
    assert torch.equal(m.net.conv1.weight, net.conv1.weight)
    assert m.net.fc.out_features == 10  # checkpoint head (1000) replaced for the new task
    with torch.no_grad():
        out = m(torch.rand(1, 3, 32, 32))  # resized to 64x64 inside
    assert out.shape == (1, 10)
    with pytest.raises(FileNotFoundError):
        create_model("tv_resnet50", 10, weights_path=str(tmp_path / "missing.pth"))


def test_input_size_resizes_inside_the_model():
    from rkd.models import set_input_size

    torch.manual_seed(0)
    m = create_model("resnet18", 10, width=4, layers=[1, 1, 1, 1]).eval()
    x = torch.rand(2, 3, 16, 16)
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    set_input_size(m, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), m(up), atol=1e-5)  # 16 px in = the 32 px upsampled image
    assert "size=32" in repr(m.normalize)
    t = set_input_size(create_model("mae_vit_tiny", img_size=64, patch_size=8), 64)
    assert t.feature_module is not None and t(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(ValueError, match="InputNormalize"):
        set_input_size(torch.nn.Linear(2, 2), 32)


@pytest.mark.parametrize("name, kw", [("resnet18", dict(width=8, layers=[1, 1, 1, 1])),
                                      ("wide_resnet", dict(depth=10, widen_factor=1))])
def test_channels_last_is_a_layout_not_a_different_function(name, kw, x):
    """Weights and stage activations are NHWC by default; ``channels_last=False`` gives NCHW
    and, with the same weights, the same logits, stage features and input gradients."""
    torch.manual_seed(0)
    nhwc = create_model(name, num_classes=10, **kw).eval()
    nchw = create_model(name, num_classes=10, channels_last=False, **kw).eval()
    nchw.load_state_dict(nhwc.state_dict())
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert all(p.is_contiguous() for p in nchw.parameters())
    feats_a, logits_a = nhwc.forward_intermediates(x, return_logits=True)
    feats_b, logits_b = nchw.forward_intermediates(x, return_logits=True)
    assert feats_a[0].is_contiguous(memory_format=torch.channels_last) and feats_b[0].is_contiguous()
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(feats_a, feats_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    grads = []
    for m in (nhwc, nchw):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(m(xi).logsumexp(1).sum(), xi)[0])
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-6)


def test_networks_that_would_hit_the_onednn_channels_last_bug_stay_nchw():
    """A 1x1 stride-2 convolution with 4 input channels (width-4 ResNet, stage 2's shortcut)
    corrupts the heap in torch 2.14.1's channels-last CPU backward: such a network stays NCHW."""
    from rkd.models.memory_format import channels_last_safe

    tiny = create_model("resnet18", num_classes=10, width=4, layers=[1, 1, 1, 1])
    assert tiny.channels_last is False and not channels_last_safe(tiny)
    assert all(p.is_contiguous() for p in tiny.parameters())
    assert create_model("resnet18", num_classes=10, width=8, layers=[1, 1, 1, 1]).channels_last


def test_channels_last_knob_reaches_the_model_and_is_refused_where_it_means_nothing():
    from rkd.config import ConfigError, load_config
    from rkd.experiment import build_model

    cfg = load_config("preset:digits_standard", ["model.channels_last=false"])
    assert build_model(cfg).channels_last is False and build_model(load_config("preset:digits_standard")).channels_last
    with pytest.raises(ConfigError, match="model.channels_last"):
        load_config("preset:digits_mae", ["model.channels_last=true"])


def test_the_layout_is_the_methods_unless_set():
    """Robust-KD's Jacobian term is slower in NHWC: its students default to NCHW; gamma = 0 and
    every other method default to channels-last; model.channels_last overrides both."""
    from rkd.config import load_config
    from rkd.experiment import build_model

    def layout(preset, *over):
        return build_model(load_config(preset, list(over))).channels_last

    assert layout("preset:digits_robust_kd") is False and layout("preset:digits_robust_kd", "method.gamma=0")
    assert layout("preset:digits_shafahi") and layout("preset:digits_adversarial")
    assert layout("preset:digits_robust_kd", "model.channels_last=true")
