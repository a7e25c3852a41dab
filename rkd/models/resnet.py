"""CIFAR-style ResNet for 32x32 inputs (He et al. 2016, as redesigned in Robust-KD).

Differences from the ImageNet ResNet: the stem is one 3x3 convolution with stride 1 and no
max-pool, so a 32x32 image keeps its resolution in stage 1. Four stages with strides
1, 2, 2, 2 and ``width * (1, 2, 4, 8)`` planes; ``BasicBlock`` (expansion 1) for
ResNet-18/34, ``Bottleneck`` (expansion 4, stride on the 3x3 convolution) for ResNet-50/101.

Feature-map shapes for a 32x32 input, ``width=w``:

=========  ================  ================
stage      BasicBlock        Bottleneck
=========  ================  ================
1          (w,   32, 32)     (4w,  32, 32)
2          (2w,  16, 16)     (8w,  16, 16)
3          (4w,   8,  8)     (16w,  8,  8)
4          (8w,   4,  4)     (32w,  4,  4)
=========  ================  ================

One model class, thin registered constructors (timm style)::

    model = resnet18(num_classes=10, width=8, layers=[1, 1, 1, 1], mean="cifar10")

Normalisation (``mean``/``std``, default CIFAR-10 statistics) is the first layer; see
:mod:`rkd.models.normalize`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
from torch import nn

from .base import FeatureModel
from .memory_format import ChannelsLast
from .normalize import StatsArg, build_normalize
from .registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (post-activation)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, out_planes)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), residual connection."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


BlockArg = Union[str, Type[BasicBlock], Type[Bottleneck]]
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(ChannelsLast, FeatureModel):
    """CIFAR-style ResNet with the project's feature-tap interface (see :mod:`rkd.models.base`).

    Args:
        block: ``"basic"``, ``"bottleneck"`` or the block class.
        layers: blocks per stage, four integers (e.g. ``[2, 2, 2, 2]`` for ResNet-18).
        num_classes: classifier outputs (0 for no classifier: ``forward`` returns pooled features).
        width: base channels of the stem and stage 1 (64 in the paper; tests use 8).
        in_chans: input channels.
        mean, std: normalisation statistics, a stats name (``mean="svhn"``) or per-channel
            values; default CIFAR-10.
        drop_rate: dropout before the classifier.
        zero_init_residual: zero the last BN scale of every block (identity-like start).
        channels_last: weights and activations in NHWC (``torch.channels_last``); faster on
            CPU (oneDNN) and GPU (cuDNN), same values (rkd.models.memory_format).
        stem_stride: stride of the stem convolution (1, CIFAR-style; 2 halves every stage's
            side, about 4x fewer operations, for inputs upsampled from a lower resolution).
    """

    def __init__(
        self,
        block: BlockArg,
        layers: Sequence[int],
        num_classes: int = 10,
        width: int = 64,
        in_chans: int = 3,
        mean: StatsArg = None,
        std: StatsArg = None,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
        channels_last: bool = True,
        stem_stride: int = 1,
    ):
        super().__init__()
        block_cls = _BLOCKS[block.lower()] if isinstance(block, str) else block
        layers = [int(n) for n in layers]
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive integers, got {layers}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.num_classes = int(num_classes)
        self.drop_rate = float(drop_rate)
        self.layers = layers
        self.block_type = block_cls.__name__

        self.normalize = build_normalize(mean, std, default="cifar10")
        self.conv1 = _conv3x3(in_chans, width, stride=stem_stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)

        in_planes = width
        stages: List[nn.Module] = []
        self.stage_channels = []
        for i, (n_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * (2**i)
            blocks = []
            for j in range(n_blocks):
                blocks.append(block_cls(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(in_planes)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        self.fc: nn.Module = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()
        self.set_channels_last(channels_last)  # see rkd.models.memory_format

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(self._layout(self.normalize(x)))))

    def get_stages(self) -> Sequence[nn.Module]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _set_classifier(self, head: nn.Module) -> None:
        self.fc = head


def _resnet(
    block: BlockArg,
    default_layers: Sequence[int],
    num_classes: int,
    width: int,
    layers: Optional[Sequence[int]],
    mean: StatsArg,
    std: StatsArg,
    **kwargs,
) -> ResNet:
    return ResNet(
        block,
        layers if layers is not None else default_layers,
        num_classes=num_classes,
        width=width,
        mean=mean,
        std=std,
        **kwargs,
    )


@register_model
def resnet18(
    num_classes: int = 10,
    width: int = 64,
    layers: Optional[Sequence[int]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) for 32x32 inputs; ``layers`` overrides the depth."""
    return _resnet("basic", (2, 2, 2, 2), num_classes, width, layers, mean, std, **kwargs)


@register_model
def resnet34(
    num_classes: int = 10,
    width: int = 64,
    layers: Optional[Sequence[int]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) for 32x32 inputs."""
    return _resnet("basic", (3, 4, 6, 3), num_classes, width, layers, mean, std, **kwargs)


@register_model
def resnet50(
    num_classes: int = 10,
    width: int = 64,
    layers: Optional[Sequence[int]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> ResNet:
    """ResNet-50 (Bottleneck x4, [3, 4, 6, 3]) for 32x32 inputs: the Robust-KD architecture."""
    return _resnet("bottleneck", (3, 4, 6, 3), num_classes, width, layers, mean, std, **kwargs)


@register_model
def resnet101(
    num_classes: int = 10,
    width: int = 64,
    layers: Optional[Sequence[int]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> ResNet:
    """ResNet-101 (Bottleneck x4, [3, 4, 23, 3]) for 32x32 inputs."""
    return _resnet("bottleneck", (3, 4, 23, 3), num_classes, width, layers, mean, std, **kwargs)


__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]
