"""Networks with feature taps; every model takes ``[0, 1]`` images and normalises inside.

Build models by name::

    from rkd.models import create_model, list_models
    model = create_model("resnet50", num_classes=10, mean="cifar10")
    feats, logits = model.forward_intermediates(x, return_logits=True)

Registered names (``list_models()``): ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``
(CIFAR-style, 32x32), ``wide_resnet``, ``wrn16_4``, ``wrn28_10``, ``wrn34_10`` (pre-activation
WRN, 32x32), ``tv_resnet50``, ``tv_wide_resnet50_2`` (torchvision ImageNet architectures,
224x224), and the MACD teacher ``mae_vit_base_patch16`` / ``mae_vit_tiny`` (an MAE plus the
feature-learning module, :class:`~rkd.models.mae.MAETeacher`; a feature extractor, no classifier).

The interface every classifier implements is documented in :mod:`rkd.models.base`.

Extending: write ``rkd/models/<family>.py``, decorate constructors with
``@register_model`` (from :mod:`rkd.models.registry`) and import the module below.
"""

from .base import FeatureModel
from .mae import FeatureLearningModule, MAETeacher, MaskedAutoencoderViT, mae_vit_base_patch16, mae_vit_tiny
from .normalize import NORMALIZATION_STATS, InputNormalize, get_normalization, resolve_stats, set_input_size
from .registry import create_model, get_model_fn, is_model, list_models, register_model
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101
from .torchvision_adapters import TorchvisionResNetAdapter, tv_resnet50, tv_wide_resnet50_2
from .wide_resnet import WideResNet, wide_resnet, wrn16_4, wrn28_10, wrn34_10

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "FeatureModel",
    "FeatureLearningModule",
    "InputNormalize",
    "MAETeacher",
    "MaskedAutoencoderViT",
    "NORMALIZATION_STATS",
    "ResNet",
    "TorchvisionResNetAdapter",
    "WideResNet",
    "create_model",
    "get_model_fn",
    "get_normalization",
    "is_model",
    "list_models",
    "mae_vit_base_patch16",
    "mae_vit_tiny",
    "register_model",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resolve_stats",
    "set_input_size",
    "tv_resnet50",
    "tv_wide_resnet50_2",
    "wide_resnet",
    "wrn16_4",
    "wrn28_10",
    "wrn34_10",
]
