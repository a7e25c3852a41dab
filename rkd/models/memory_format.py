"""Channels-last (NHWC) layout for the convolutional networks.

The ResNets and Wide ResNets keep their weights in ``torch.channels_last`` and turn their
normalised input into it at the stem, so every convolution runs on NHWC tensors: oneDNN's CPU
kernels and cuDNN's tensor-core kernels are faster there (on this project's 2-core CPU machine,
forward + backward of the digits ResNet-18 1.3-1.4x; ``benchmarks/bench_memory_format.py``).
Both the weights and the activations must be channels-last; either alone gains nothing. The
layout changes no value a caller sees: shapes, ``state_dict`` keys and contents, and the
content-addressed cache keys (which hash tensors in logical order) are those of the default layout.
"""

from __future__ import annotations

import torch


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when it is a 4-D image batch; unchanged otherwise."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


__all__ = ["to_channels_last"]
