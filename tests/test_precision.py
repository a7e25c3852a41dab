"""The numerics and speed settings of a training process (rkd.engine.precision, the Trainer's
knobs, the GPU-resident loader): each setting does what it says on CPU, and the settings a
method cannot take are refused before any work."""

from __future__ import annotations

import pytest
import torch

from rkd.config import ConfigError, load_config
from rkd.config.schema import TrainConfig
from rkd.data import make_synthetic
from rkd.data.device_loader import DeviceLoader, fits_on_device
from rkd.data.loader import make_loader
from rkd.data.transforms import train_transform
from rkd.engine import EpochShuffleSampler, Trainer, precision
from rkd.engine.precision import Precision, amp_dtype, attack_precision, backend_settings_kept, resolve_auto
from rkd.methods import AdversarialTraining, StandardTraining, attack_mode
from rkd.models import create_model


@pytest.fixture(autouse=True)
def _process_settings_restored():
    with backend_settings_kept():
        yield


def _model():
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, width=8, layers=[1, 1, 1, 1])


def _trainer(method=None, data_on_device=False, **train):
    cfg = TrainConfig(**{"epochs": 1, "warmup_epochs": 0, "progress": "none", **train})
    data = make_synthetic(True, n_train=16, seed=0).with_transform(train_transform(flip=True))
    return Trainer(method or StandardTraining(_model()), data, cfg, batch_size=8, data_on_device=data_on_device)


# ------------------------------------------------------------------------------------- AMP modes
@pytest.mark.parametrize("setting, dtype", [(False, None), ("bf16", torch.bfloat16), ("fp16", torch.float16),
                                            (True, torch.bfloat16)])
def test_amp_setting_gives_the_autocast_dtype_on_cpu(setting, dtype):
    assert amp_dtype(setting, "cpu") is dtype
    p = Precision.from_setting(setting, "cpu")
    assert p.scaler.is_enabled() == (dtype is torch.float16)  # a loss scale only for fp16


def test_true_means_fp16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    assert amp_dtype(True, "cuda") is torch.float16 and amp_dtype("bf16", "cuda") is torch.bfloat16


@pytest.mark.parametrize("setting, attack_autocast", [("bf16", True), ("fp16", False), (False, False)])
def test_inner_attacks_keep_bf16_autocast_and_leave_fp16(setting, attack_autocast):
    model = _model()
    with Precision.from_setting(setting, "cpu").step():
        with attack_mode(model, training=False):
            assert torch.is_autocast_enabled("cpu") == attack_autocast
            out = model(torch.rand(2, 3, 32, 32))
        assert model.training  # the mode is restored
    assert out.dtype == (torch.bfloat16 if attack_autocast else torch.float32)
    with attack_precision():  # outside a training step: fp32
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("setting", ["bf16", "fp16"])
def test_adversarial_training_epoch_under_each_amp_mode_is_finite(setting):
    from rkd.config.schema import TrainAttackConfig

    t = _trainer(AdversarialTraining(_model(), TrainAttackConfig(norm="linf", eps=8 / 255, steps=2)), amp=setting)
    metrics = t.fit()[-1]
    assert torch.isfinite(torch.tensor(metrics["train_loss"])) and t.settings["amp"] == setting
    assert t.scaler.is_enabled() == (setting == "fp16")


# ---------------------------------------------------------------------------------- speed knobs
def test_auto_settings_resolve_on_for_cuda_off_for_cpu_and_off_where_fp32_is_needed():
    assert resolve_auto("auto", "cuda") and not resolve_auto("auto", "cpu")
    assert not resolve_auto("auto", "cuda", allowed=False)
    assert resolve_auto(True, "cpu") and not resolve_auto(False, "cuda")


def test_cpu_trainer_defaults_and_explicit_settings():
    t = _trainer()
    assert t.settings == {"matmul_fp32_precision": "ieee", "cudnn_conv_fp32_precision": "ieee",
                          "cudnn_benchmark": False, "fused_optimizer": False, "compile": False,
                          "data_on_device": False, "amp": "fp32"}
    t = _trainer(data_on_device=True, tf32=True, cudnn_benchmark=True, fused_optimizer=True)
    assert t.optimizer.defaults["fused"] is True and isinstance(t.loader, DeviceLoader)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
    assert torch.backends.cudnn.benchmark
    assert t.fit()[-1]["train_loss"] > 0


def test_fused_optimizer_and_device_loader_train_the_same_weights():
    """Same batches (the device loader replays the loader's augmentation draws), same update."""
    runs = []
    for fused, on_device in ((False, False), (True, True)):
        torch.manual_seed(1)
        t = _trainer(data_on_device=on_device, fused_optimizer=fused)
        t.fit()
        runs.append(t.method.model.state_dict())
    for k, v in runs[0].items():
        assert torch.allclose(v.float(), runs[1][k].float(), rtol=1e-4, atol=1e-6), k


def test_compile_keeps_the_state_dict_and_trains(monkeypatch):
    monkeypatch.setattr(precision, "COMPILE_BACKEND", "aot_eager")  # inductor's C++ build: ~30 s here
    t = _trainer(compile=True)
    assert t.settings["compile"] and t.method.model._compiled_call_impl is not None
    keys = set(_model().state_dict())
    t.fit()
    assert set(t.method.model.state_dict()) == keys  # checkpoints and caches load into an uncompiled net


def test_fp32_only_method_refuses_amp_tf32_and_compile_before_work():
    for key in ("train.amp=bf16", "train.tf32=true", "train.compile=true"):
        with pytest.raises(ConfigError, match=rf"{key.split('=')[0]} must be false while method.gamma > 0"):
            load_config("preset:digits_robust_kd", [key])
    cfg = load_config("preset:digits_robust_kd", ["train.amp=bf16", "train.tf32=true", "method.gamma=0"])
    assert cfg.train.amp == "bf16" and cfg.method.fp32_only() is None
    assert load_config("preset:digits_robust_kd").method.fp32_only()  # auto settings pass, resolved to fp32
    with pytest.raises(ConfigError, match="train.amp"):
        load_config("preset:digits_standard", ["train.amp=fp8"])


# ------------------------------------------------------------------------------- device loader
def test_device_loader_yields_the_loaders_batches():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g)
    from rkd.data.arrays import TensorImageDataset

    data = TensorImageDataset(images, torch.arange(50) % 10, transform=train_transform(flip=True, padding=2))
    sampler = EpochShuffleSampler(50, seed=3)
    torch.manual_seed(1)
    ref = list(make_loader(data, 8, sampler=sampler))
    torch.manual_seed(1)
    got = list(DeviceLoader(data, 8, sampler=sampler, device="cpu"))
    assert len(got) == len(ref) == 7
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    assert fits_on_device(data) and not fits_on_device(data, max_bytes=100)
