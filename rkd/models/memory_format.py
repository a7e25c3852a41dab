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
from torch import nn

#: torch 2.14.1's CPU (oneDNN) backward pass of a channels-last 1x1 stride-2 convolution with
#: 3-4 input channels corrupts the heap (an abort, or a hang in the autograd engine), on one
#: thread or two; 8 and more were safe in every shape tried. Networks with such a convolution
#: (a ResNet of width 4: stage 2's shortcut) stay NCHW whatever is asked.
MIN_STRIDED_POINTWISE_CHANNELS = 8


def channels_last_safe(module: nn.Module) -> bool:
    """False when ``module`` has a 1x1 strided convolution with fewer than
    :data:`MIN_STRIDED_POINTWISE_CHANNELS` input channels (see there)."""
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < MIN_STRIDED_POINTWISE_CHANNELS for m in module.modules())


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when it is a 4-D image batch; unchanged otherwise."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class ChannelsLast:
    """Mixin of the networks that can run channels-last: :meth:`set_channels_last` moves the
    weights, :meth:`_layout` the stem's input (call it on the normalised input)."""

    channels_last: bool = False

    def set_channels_last(self, on: bool) -> "ChannelsLast":
        """NHWC when ``on`` (and :func:`channels_last_safe`), else NCHW."""
        self.channels_last = bool(on) and channels_last_safe(self)  # type: ignore[arg-type]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.to(memory_format=fmt)  # type: ignore[attr-defined]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(x) if self.channels_last else x


__all__ = ["ChannelsLast", "MIN_STRIDED_POINTWISE_CHANNELS", "channels_last_safe", "to_channels_last"]
