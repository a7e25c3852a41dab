"""torchvision's ImageNet ResNet-50 and Wide-ResNet-50-2 behind the project's interface.

These are the MACD backbones (224x224 inputs, ImageNet stem: 7x7 stride-2 conv + max-pool).
The real ``torchvision.models`` architectures are wrapped, not re-implemented, so published
torchvision state dicts load unchanged into ``adapter.net``.

Weights (this project runs offline; nothing is downloaded unless you ask for it):

- default: random initialisation (``weights=None``);
- ``weights_path="/path/resnet50.pth"``: a local torchvision-format state dict (a plain
  state dict, or a checkpoint dict holding one under ``"state_dict"`` or ``"model"``;
  a ``"module."`` prefix from DataParallel is stripped). If its classifier has a different
  number of outputs than ``num_classes`` the checkpoint head is loaded and then replaced by
  a fresh head with ``reset_classifier``;
- ``pretrained=True``: torchvision's ``*_Weights.DEFAULT`` ImageNet weights. This needs
  internet access or the file already in the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
  offline without the cache it fails with torchvision's download error.

Feature taps: ``forward_intermediates`` returns the outputs of ``layer1`` .. ``layer4``:
``(256, 56, 56)``, ``(512, 28, 28)``, ``(1024, 14, 14)``, ``(2048, 7, 7)`` for a 224x224
input (both models; WRN-50-2 only widens the bottleneck's inner 3x3 convolution).

``resize_to``: optional side length; when set, inputs are bilinearly resized inside the model
(before normalisation), so 32x32 dataset images can be fed to a 224x224 network while attacks
still perturb the original 32x32 pixels. Default ``None`` (inputs used as given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torchvision
from torch import nn

from .base import FeatureModel
from .normalize import StatsArg, build_normalize
from .registry import register_model


def load_state_dict_file(path: Union[str, Path]) -> dict:
    """Read a state dict from ``path`` (``torch.load(weights_only=True)``), unwrapping
    ``{"state_dict": ...}`` / ``{"model": ...}`` and stripping a ``"module."`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


class TorchvisionResNetAdapter(FeatureModel):
    """Wrap a ``torchvision.models.ResNet`` (``net``) with input normalisation and feature taps.

    Args:
        net: a torchvision ResNet instance (its ``fc`` is the classifier).
        mean, std: normalisation statistics (default ImageNet).
        resize_to: resize inputs to this side length inside the model (``None``: no resize).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        net: torchvision.models.ResNet,
        mean: StatsArg = None,
        std: StatsArg = None,
        resize_to: Optional[int] = None,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.normalize = build_normalize(mean, std, default="imagenet")
        self.net = net
        self.resize_to = int(resize_to) if resize_to else None
        self.drop_rate = float(drop_rate)
        self.num_classes = int(net.fc.out_features)
        self.num_features = int(net.fc.in_features)
        self.stage_channels = [self._out_channels(layer) for layer in self.get_stages()]

    @staticmethod
    def _out_channels(layer: nn.Sequential) -> int:
        last = layer[-1]
        bn = getattr(last, "bn3", None) or getattr(last, "bn2")
        return int(bn.num_features)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = nn.functional.interpolate(
                x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False
            )
        net = self.net
        return net.maxpool(net.relu(net.bn1(net.conv1(self.normalize(x)))))

    def get_stages(self) -> Sequence[nn.Module]:
        net = self.net
        return (net.layer1, net.layer2, net.layer3, net.layer4)

    def get_classifier(self) -> nn.Module:
        return self.net.fc

    def _set_classifier(self, head: nn.Module) -> None:
        self.net.fc = head


def _build(
    ctor: Callable[..., torchvision.models.ResNet],
    weights_enum,
    num_classes: int,
    pretrained: bool,
    weights_path: Optional[Union[str, Path]],
    mean: StatsArg,
    std: StatsArg,
    **kwargs,
) -> TorchvisionResNetAdapter:
    if pretrained and weights_path:
        raise ValueError("give either pretrained=True or weights_path, not both")
    if pretrained:
        # needs internet or $TORCH_HOME/hub/checkpoints/<file>; ImageNet head has 1000 classes
        net = ctor(weights=weights_enum.DEFAULT)
    elif weights_path:
        state = load_state_dict_file(weights_path)
        ckpt_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else num_classes
        net = ctor(weights=None, num_classes=ckpt_classes)
        net.load_state_dict(state)
    else:
        net = ctor(weights=None, num_classes=num_classes)
    model = TorchvisionResNetAdapter(net, mean=mean, std=std, **kwargs)
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


#: the torchvision weights ``pretrained=True`` loads, per registered architecture
PRETRAINED = {"tv_resnet50": torchvision.models.ResNet50_Weights,
              "tv_wide_resnet50_2": torchvision.models.Wide_ResNet50_2_Weights}


def pretrained_weights_file(arch: str) -> tuple[Path, str]:
    """(where torch's hub cache keeps ``arch``'s pretrained weights, the URL they come from)."""
    url = PRETRAINED[arch].DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


@register_model
def tv_resnet50(
    num_classes: int = 1000,
    pretrained: bool = False,
    weights_path: Optional[Union[str, Path]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> TorchvisionResNetAdapter:
    """torchvision ImageNet ResNet-50 (224x224) with the feature-tap interface.

    ``pretrained=True`` uses ``ResNet50_Weights.DEFAULT`` (internet or hub cache needed);
    ``weights_path`` loads a local state dict. Extra kwargs: ``resize_to``, ``drop_rate``.
    """
    return _build(torchvision.models.resnet50, torchvision.models.ResNet50_Weights,
                  num_classes, pretrained, weights_path, mean, std, **kwargs)


@register_model
def tv_wide_resnet50_2(
    num_classes: int = 1000,
    pretrained: bool = False,
    weights_path: Optional[Union[str, Path]] = None,
    mean: StatsArg = None,
    std: StatsArg = None,
    **kwargs,
) -> TorchvisionResNetAdapter:
    """torchvision ImageNet Wide-ResNet-50-2 (224x224) with the feature-tap interface.

    ``pretrained=True`` uses ``Wide_ResNet50_2_Weights.DEFAULT`` (internet or hub cache
    needed); ``weights_path`` loads a local state dict. Extra kwargs: ``resize_to``, ``drop_rate``.
    """
    return _build(torchvision.models.wide_resnet50_2, torchvision.models.Wide_ResNet50_2_Weights,
                  num_classes, pretrained, weights_path, mean, std, **kwargs)


__all__ = ["TorchvisionResNetAdapter", "load_state_dict_file", "tv_resnet50", "tv_wide_resnet50_2"]
