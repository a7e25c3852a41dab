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


class ChannelsLast:
    """Mixin of the networks that can run channels-last: :meth:`set_channels_last` moves the
    weights, :meth:`_layout` the stem's input (call it on the normalised input)."""

    channels_last: bool = False

    def set_channels_last(self, on: bool) -> "ChannelsLast":
        self.channels_last = bool(on)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.to(memory_format=fmt)  # type: ignore[attr-defined]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(x) if self.channels_last else x


__all__ = ["ChannelsLast", "to_channels_last"]
