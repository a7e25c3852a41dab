"""Which device a process trains on: ``device: auto`` resolved, and checked before any work."""

from __future__ import annotations

from typing import Sequence

import torch

from rkd.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else the CPU. A device that is not there
    is a :class:`ConfigError` before any work, not a CUDA error minutes into a run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        missing = "no CUDA device is visible to this process"
    elif device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        missing = f"this process sees {torch.cuda.device_count()} CUDA device(s)"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        missing = "MPS is not available here"
    else:
        return device
    raise ConfigError("device", [("", f"{name}: {missing}; use device=cpu or device=auto")])


def device_for_grant(name: str, granted_gpus: Sequence) -> str:
    """``device: auto`` in a process a scheduler placed (a Ray trial, task or actor): CUDA only
    when it was granted a GPU. Ray does not hide a machine's GPUs from a process that asked for
    none, so ``auto`` alone would put every zero-GPU trial on cuda:0, outside Ray's accounting."""
    if name != "auto":
        return name
    return "cuda" if len(granted_gpus) else "cpu"
