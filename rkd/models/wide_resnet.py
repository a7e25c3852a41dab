"""Wide residual network (Zagoruyko & Komodakis 2016) for 32x32 inputs, pre-activation.

``WRN-d-k``: depth ``d = 6n + 4`` (``n`` blocks per stage), widen factor ``k``. A 3x3 stem
convolution with ``width`` (16) channels, then three stages of ``n`` pre-activation blocks
(BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3) with ``width*k``, ``2*width*k``, ``4*width*k``
channels and strides 1, 2, 2, then a final BN-ReLU, global average pooling and a linear layer.

Feature taps: one per stage (3). Because the network is pre-activation, the last stage's
tap includes the final BN-ReLU (it is part of ``layer3`` here), so that
``forward_intermediates(x)[-1] == forward_features(x)`` is the map that gets pooled. The
first two taps are the raw (pre-activation) residual-stream outputs of their stages.

Shapes for a 32x32 input: ``(16k, 32, 32)``, ``(32k, 16, 16)``, ``(64k, 8, 8)`` (``width=16``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import FeatureModel
from .memory_format import ChannelsLast
from .normalize import StatsArg, build_normalize
from .registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 (stride) - dropout - BN-ReLU-conv3x3, plus shortcut.

    When the shape changes, the shortcut is a 1x1 convolution applied to the *activated* input
    (as in the reference implementation).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.bn1(x))
        out = self.act2(self.bn2(self.conv1(a)))
        if self.drop_rate > 0.0:
            out = nn.functional.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        res = x if self.shortcut is None else self.shortcut(a)
        return out + res


class WideResNet(ChannelsLast, FeatureModel):
    """Pre-activation WideResNet with the project's feature-tap interface.

    Args:
        depth: ``6n + 4`` (10, 16, 22, 28, 34, 40, ...).
        widen_factor: ``k``, multiplies the stage widths.
        num_classes: classifier outputs (0: no classifier).
        width: base channels (16 in the paper); stage widths are ``width*k*(1, 2, 4)``.
        dropout: dropout probability between the two convolutions of every block (0.3 in
            the paper for some settings; 0 by default, as in most robustness work).
        in_chans: input channels.
        mean, std: normalisation statistics, a stats name or per-channel values; default CIFAR-10.
        drop_rate: dropout before the classifier.
        channels_last: weights and activations in NHWC (rkd.models.memory_format).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        width: int = 16,
        dropout: float = 0.0,
        in_chans: int = 3,
        mean: StatsArg = None,
        std: StatsArg = None,
        drop_rate: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen_factor < 1 or width < 1:
            raise ValueError("widen_factor and width must be >= 1")
        n = (depth - 4) // 6
        self.depth = int(depth)
        self.widen_factor = int(widen_factor)
        self.num_classes = int(num_classes)
        self.drop_rate = float(drop_rate)
        channels = [width, width * widen_factor, 2 * width * widen_factor, 4 * width * widen_factor]

        self.normalize = build_normalize(mean, std, default="cifar10")
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, stride=1, padding=1, bias=False)

        def stage(in_planes: int, out_planes: int, stride: int) -> list:
            return [
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                for i in range(n)
            ]

        self.layer1 = nn.Sequential(*stage(channels[0], channels[1], 1))
        self.layer2 = nn.Sequential(*stage(channels[1], channels[2], 2))
        # the final BN-ReLU of the pre-activation network closes stage 3 (see module docstring)
        self.layer3 = nn.Sequential(
            *stage(channels[2], channels[3], 2), nn.BatchNorm2d(channels[3]), nn.ReLU(inplace=True)
        )
        self.stage_channels = channels[1:]
        self.num_features = channels[3]
        self.fc: nn.Module = nn.Linear(channels[3], num_classes) if num_classes > 0 else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.set_channels_last(channels_last)  # see rkd.models.memory_format

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self._layout(self.normalize(x)))

    def get_stages(self) -> Sequence[nn.Module]:
        return (self.layer1, self.layer2, self.layer3)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _set_classifier(self, head: nn.Module) -> None:
        self.fc = head


@register_model
def wide_resnet(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    width: int = 16,
    dropout: float = 0.0,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> WideResNet:
    """WRN-``depth``-``widen_factor`` (default WRN-28-10); tests use ``depth=10, widen_factor=1``."""
    return WideResNet(depth, widen_factor, num_classes=num_classes, width=width, dropout=dropout,
                      mean=mean, std=std, **kwargs)


@register_model
def wrn28_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-10."""
    return WideResNet(28, 10, num_classes=num_classes, **kwargs)


@register_model
def wrn34_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-34-10 (the usual adversarial-training benchmark network)."""
    return WideResNet(34, 10, num_classes=num_classes, **kwargs)


@register_model
def wrn16_4(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-16-4 (small; quick experiments)."""
    return WideResNet(16, 4, num_classes=num_classes, **kwargs)


__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn16_4", "wrn28_10", "wrn34_10"]
