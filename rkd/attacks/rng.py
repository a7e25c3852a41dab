"""The random state an attack may use without disturbing its caller's."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def forked_rng(x: Optional[torch.Tensor] = None, seed: Optional[int] = None) -> Iterator[None]:
    """Fork the CPU generator and that of ``x``'s CUDA device (restored on exit, also on error);
    with ``seed``, seed exactly those generators inside."""
    devices = []
    if x is not None and x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.default_generator.manual_seed(int(seed))
            for d in devices:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(int(seed))
        yield
