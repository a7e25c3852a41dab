"""The numerics of one training process: the AMP mode, TF32 and cuDNN's autotuner.

``train.amp`` picks the AMP mode (:func:`amp_dtype`):

=========  ======================================================================
``false``  fp32 everywhere (the default)
``bf16``   bfloat16 autocast, no loss scaling (bf16 has fp32's exponent range), the
           inner attacks of AT/TRADES/the distillation family included
``fp16``   float16 autocast with a GradScaler (GPUs without bf16, e.g. V100); the inner
           attacks run in fp32: their input gradients underflow in fp16 (a zero gradient
           has sign 0, a PGD step that does not move), so a weaker attack, silently
``true``   ``bf16`` where the device has it (every CPU, CUDA from Ampere on), else ``fp16``
=========  ======================================================================

The evaluation never runs under autocast. A method whose step must stay in fp32 (Robust-KD's
Jacobian term, a double backward: :meth:`rkd.config.methods.MethodConfig.fp32_only`) refuses
AMP, TF32 and ``torch.compile`` at config time.

``train.tf32`` (``auto``: on for CUDA unless the method is fp32-only) sets fp32 matmuls and
cuDNN convolutions to TF32 (``torch.backends.{cuda.matmul,cudnn.conv}.fp32_precision``; torch's
own default is TF32 for cuDNN convolutions and IEEE for matmuls, so ``false`` also turns the
convolutions' TF32 off). ``train.cudnn_benchmark`` (``auto``: on for CUDA) lets cuDNN time its
algorithms for each new input shape (fixed shapes in every rkd run). Both are process-wide
settings: :func:`apply_backend_settings` sets them for the process that trains.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch

AmpSetting = bool | str  # false | true | "bf16" | "fp16"

#: torch.compile's backend for ``train.compile`` (the suite sets "aot_eager": the same tracing
#: and autograd graphs without inductor's C++ build, which takes ~30 s for a tiny CPU model)
COMPILE_BACKEND = "inductor"

#: True while a training step runs under bf16 autocast: its inner attacks may keep it
_ATTACKS_KEEP_AUTOCAST: ContextVar[bool] = ContextVar("rkd_attacks_keep_autocast", default=False)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True


def amp_dtype(amp: AmpSetting, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: fp32)."""
    device = torch.device(device)
    if amp is False or amp == "false":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or bf16_supported(device):
        return torch.bfloat16
    return torch.float16


@dataclass
class Precision:
    """The AMP mode of a trainer: the step's autocast context and its GradScaler."""

    device: torch.device
    dtype: torch.dtype | None

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @classmethod
    def from_setting(cls, amp: AmpSetting, device: torch.device | str) -> "Precision":
        device = torch.device(device)
        return cls(device, amp_dtype(amp, device))

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around a training step's forward pass: autocast in the AMP dtype; under bf16 the
        step's inner attacks keep it (:func:`attack_precision`)."""
        if self.dtype is None:
            yield
            return
        token = _ATTACKS_KEEP_AUTOCAST.set(self.dtype == torch.bfloat16)
        try:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield
        finally:
            _ATTACKS_KEEP_AUTOCAST.reset(token)


@contextmanager
def attack_precision() -> Iterator[None]:
    """Inside an inner attack of a training step: the step's bf16 autocast is kept, any other
    autocast (fp16) is turned off, so the attack computes in fp32."""
    if _ATTACKS_KEEP_AUTOCAST.get():
        yield
        return
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield


def compile_in_place(model: torch.nn.Module) -> None:
    """``torch.compile`` the module's forward in place (``nn.Module.compile``): its state dict,
    checkpoints and the methods' other calls into it (features, stages) are unchanged."""
    model.compile(backend=COMPILE_BACKEND)


def resolve_auto(setting: bool | str, device: torch.device | str, allowed: bool = True) -> bool:
    """``auto`` -> on for CUDA when ``allowed``; booleans as they are."""
    if setting == "auto":
        return torch.device(device).type == "cuda" and allowed
    return bool(setting)


def apply_backend_settings(*, tf32: bool, cudnn_benchmark: bool) -> dict[str, object]:
    """Set TF32 (matmuls and cuDNN convolutions) and cuDNN's autotuner for this process;
    returns the settings as they now are, for the run's record."""
    precision = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    return backend_settings()


def backend_settings() -> dict[str, object]:
    return {"matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "cudnn_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


@contextmanager
def legacy_tf32_flag() -> Iterator[None]:
    """Inside the block, cuDNN's TF32 setting is also readable through the legacy
    ``torch.backends.cudnn.allow_tf32`` (torch.export reads it, and raises once the new per-op
    ``fp32_precision`` API has set the convolutions alone); the new settings are restored after."""
    saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision)
    torch.backends.cudnn.allow_tf32 = saved[0] == "tf32"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = saved


@contextmanager
def backend_settings_kept() -> Iterator[None]:
    """Restore the process-wide TF32 and cuDNN settings after the block (tests, benchmarks)."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
         torch.backends.cudnn.benchmark) = saved
