"""The feature-tap interface shared by every classifier in :mod:`rkd.models`.

The whole project talks to classifiers through this contract (timm's API):

``forward(x) -> logits``
    ``x`` is ``(N, C, H, W)`` in ``[0, 1]``; normalisation happens inside.
``forward_features(x) -> (N, C_last, H', W')``
    normalisation + stem + every stage; no pooling.
``forward_head(f, pre_logits=False) -> logits`` (or the pooled ``(N, num_features)`` vector)
    global average pooling, optional dropout, linear classifier.
``forward_intermediates(x, return_logits=False)``
    the output of every residual stage, a list of ``num_stages`` maps, the last one equal to
    ``forward_features(x)``; with ``return_logits=True`` returns ``(maps, logits)`` from one pass.
attributes ``num_classes``, ``num_features``, ``stage_channels``, ``num_stages``;
``get_classifier()``, ``reset_classifier(num_classes)``.

Subclasses implement :meth:`forward_stem` (normalisation + stem), :meth:`get_stages`,
:meth:`get_classifier` and :meth:`_set_classifier`; the rest is shared here.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import nn


class FeatureModel(nn.Module):
    """Base class implementing the feature-tap interface over ``stem -> stages -> head``."""

    num_classes: int
    num_features: int
    stage_channels: List[int]
    drop_rate: float = 0.0

    # ---- to implement -------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[0, 1]`` input and apply the stem (everything before stage 1)."""
        raise NotImplementedError

    def get_stages(self) -> Sequence[nn.Module]:
        """The residual stages, in order; each maps the previous stage's output to its own."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The final linear layer (``nn.Identity`` when ``num_classes == 0``)."""
        raise NotImplementedError

    def _set_classifier(self, head: nn.Module) -> None:
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of residual stages (the length of ``forward_intermediates``' list)."""
        return len(self.stage_channels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map ``(N, stage_channels[-1], H', W')``; no pooling."""
        x = self.forward_stem(x)
        for stage in self.get_stages():
            x = stage(x)
        return x

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool + (dropout) + linear classifier.

        With ``pre_logits=True`` returns the pooled ``(N, num_features)`` vector (before
        dropout), e.g. for the GAP-feature loss of Shafahi et al.
        """
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)
        if pre_logits:
            return pooled
        if self.drop_rate > 0.0:
            pooled = nn.functional.dropout(pooled, p=self.drop_rate, training=self.training)
        return self.get_classifier()(pooled)

    def forward_intermediates(
        self, x: torch.Tensor, return_logits: bool = False
    ) -> Union[List[torch.Tensor], Tuple[List[torch.Tensor], torch.Tensor]]:
        """Output of every residual stage, ``[f_1, ..., f_S]`` with ``f_S == forward_features(x)``.

        ``return_logits=True`` also returns the logits computed from ``f_S`` in the same pass:
        ``(feats, logits)``.
        """
        x = self.forward_stem(x)
        feats: List[torch.Tensor] = []
        for stage in self.get_stages():
            x = stage(x)
            feats.append(x)
        if return_logits:
            return feats, self.forward_head(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for ``[0, 1]`` images ``x``."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised ``Linear(num_features, num_classes)``.

        The backbone (normalisation, stem, stages) is untouched; this is how a student is
        initialised from a teacher trained on another label set. ``num_classes=0`` gives an
        ``nn.Identity`` head (``forward`` then returns the pooled features). The new head is
        created on the device/dtype of the old one.
        """
        old = self.get_classifier()
        ref = next(iter(old.parameters()), None)
        if ref is None:  # old head is an Identity: take any backbone parameter as reference
            ref = next(iter(self.parameters()))
        if num_classes > 0:
            head: nn.Module = nn.Linear(self.num_features, num_classes)
            head.to(device=ref.device, dtype=ref.dtype)
        else:
            head = nn.Identity()
        self._set_classifier(head)
        self.num_classes = int(num_classes)


__all__ = ["FeatureModel"]
