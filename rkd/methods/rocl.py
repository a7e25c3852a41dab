"""RoCL (Kim et al. 2020, "Adversarial self-supervised contrastive learning"), stage 1: a
self-supervised encoder, no labels, no teacher, as in the authors' code (Kim-Minseon/RoCL).

One step, for a batch ``x`` (labels unused)::

    t1, t2 = view(x), view(x)                      two SimCLR views (rkd.data.contrastive_views)
    adv    = argmax_{||adv - t1|| <= eps} NT-Xent(g(adv), g(t2))    instance-wise attack
    L      = NT-Xent(g(t1), g(t2), g(adv)) + 1/lambda * NT-Xent(g(adv), g(t2))

with ``g = projector(pool(encoder(.)))`` and NT-Xent at temperature 0.5
(:func:`rkd.losses.nt_xent`). The attack runs from a uniform random start in the Linf ball
around ``t1`` (8/255, 7 steps of 0.007), encoder and projector in eval mode; lambda = 256. The
projector is ``Linear(D, hidden) -> ReLU -> Linear(hidden, out)`` (the authors': 2048, 128),
trained and checkpointed with the run but not part of ``model.pt``: the encoder is the
classifier architecture whose head stays untrained. Stage 2 (:mod:`rkd.methods.linear_eval`)
trains a linear classifier on the frozen encoder.

The per-epoch validation (no labels are needed) is the mean cosine similarity of the encoder's
features between two fixed-seed views of each image, and between different images: an encoder
that learns instances keeps the first high and the second low; a collapsed one has both at 1.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rkd.attacks import pgd
from rkd.config.methods import MethodConfig
from rkd.config.numbers import Number
from rkd.config.schema import TrainAttackConfig
from rkd.data.contrastive_views import ViewParams, random_view
from rkd.losses import nt_xent
from rkd.methods.base import Method, StepOutput, attack_mode
from rkd.methods.registry import MethodSpec, register_method
from rkd.models.modes import evaluation_mode


class RoclAttackConfig(TrainAttackConfig):
    """The instance-wise attack: Linf 8/255, 7 steps of 0.007, uniform start, eval mode."""

    steps: Annotated[int, Field(ge=1)] = 7
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(0.007, description="the authors' 0.007")
    mode: Literal["train", "eval"] = "eval"


class RoclMethod(MethodConfig):
    """RoCL stage 1: adversarial self-supervised contrastive learning of an encoder (labels
    unused); stage 2 is method ``linear_eval`` on the result."""

    CLASSIFIER: ClassVar[bool] = False
    name: Literal["rocl"]
    temperature: Annotated[Number, Field(gt=0)] = Field(0.5, description="NT-Xent temperature")
    lam: Annotated[Number, Field(gt=0)] = Field(256.0, description="lambda: the regulariser's weight is 1/lambda")
    attack: RoclAttackConfig = Field(default_factory=RoclAttackConfig)
    hidden_dim: Annotated[int, Field(ge=1)] = Field(2048, description="projector hidden width")
    projection_dim: Annotated[int, Field(ge=1)] = Field(128, description="projector output width")
    detach_keys: bool = Field(True, description="the authors' similarity detaches its second factor")
    crop_scale: Annotated[list[Annotated[Number, Field(gt=0, le=1)]], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.08, 1.0], description="[low, high] area fraction of the random crops")
    jitter: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.5, description="colour-jitter strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s")
    p_jitter: Annotated[Number, Field(ge=0, le=1)] = 0.8
    p_gray: Annotated[Number, Field(ge=0, le=1)] = 0.2
    flip: bool = Field(True, description="random horizontal flips in the views (false for digits)")

    def check(self, cfg) -> None:
        if cfg.eval.enabled:
            raise ValueError("method rocl trains an encoder without a classifier: set eval.enabled: false "
                             "(method linear_eval on the run evaluates it)")
        if self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError(f"method.crop_scale {list(self.crop_scale)}: low must not exceed high")

    def view_params(self) -> ViewParams:
        s = float(self.jitter)
        return ViewParams(crop_scale=tuple(map(float, self.crop_scale)), flip=self.flip, p_jitter=float(self.p_jitter),
                          brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s,
                          p_gray=float(self.p_gray))


class Embedding(nn.Module):
    """``x -> projector(pooled encoder features)``."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True))


class Rocl(Method):
    name = "rocl"

    def __init__(self, model: nn.Module, *, views: ViewParams = ViewParams(), attack: RoclAttackConfig | None = None,
                 temperature: float = 0.5, lam: float = 256.0, hidden_dim: int = 2048, projection_dim: int = 128,
                 detach_keys: bool = True):
        super().__init__(model)
        self.projector = nn.Sequential(nn.Linear(model.num_features, hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(hidden_dim, projection_dim))
        self.views, self.attack = views, attack or RoclAttackConfig()
        self.temperature, self.lam, self.detach_keys = float(temperature), float(lam), detach_keys

    @property
    def embed(self) -> Embedding:
        """``g``: a view of ``model`` and ``projector`` (not a submodule: no second copy of their
        weights in the state dict), in the model's mode, which the attack's mode switch restores."""
        embed = Embedding(self.model, self.projector)
        embed.training = self.model.training
        return embed

    def contrastive(self, *zs: torch.Tensor) -> torch.Tensor:
        return nt_xent(list(zs), self.temperature, detach_keys=self.detach_keys)

    def instance_attack(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """The view of ``t1`` in its eps ball that maximises NT-Xent against ``t2``."""
        a, embed = self.attack, self.embed
        with attack_mode(embed, a.mode == "train" and self.training):
            with torch.no_grad():
                z2 = embed(t2)
            return pgd(embed, t1, z2, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.step_size,
                       random_start=a.random_start, loss_fn=lambda z_adv, target: self.contrastive(z_adv, target))

    def training_step(self, x, y) -> StepOutput:
        t1, t2 = random_view(x, self.views), random_view(x, self.views)
        adv = self.instance_attack(t1, t2)
        embed = self.embed
        z1, z2, z_adv = embed(t1), embed(t2), embed(adv)
        views3 = self.contrastive(z1, z2, z_adv)
        reg = self.contrastive(z_adv, z2)
        return StepOutput(loss=views3 + reg / self.lam, terms={"nt_xent": views3, "nt_xent_adv": reg})


def view_similarity_fn(cfg, data, device, max_samples: int | None = 256):
    """Per-epoch validation: mean cosine similarity of the encoder's pooled features between two
    fixed-seed views of each image (``val_view_cosine``) and between different images
    (``val_other_cosine``), on (the first ``max_samples`` of) ``data``."""
    from rkd.data.loader import make_loader
    from rkd.evaluation.robust_accuracy import eval_subset

    loader = make_loader(eval_subset(data, max_samples), cfg.data.eval_batch_size)
    params = cfg.method.view_params()

    def fn(model):
        gen = torch.Generator(device=device).manual_seed(0)
        same = other = 0.0
        n = 0
        with evaluation_mode(model), torch.no_grad():
            for x, _ in loader:
                x = x.to(device)
                f1, f2 = (F.normalize(model.forward_head(model.forward_features(random_view(x, params, gen)),
                                                         pre_logits=True), dim=1) for _ in range(2))
                same += (f1 * f2).sum().item()
                other += (f1 * f2.roll(1, dims=0)).sum().item()
                n += x.shape[0]
        return {"val_view_cosine": same / max(n, 1), "val_other_cosine": other / max(n, 1)}

    return fn


def _build(cfg: RoclMethod, model, models, seed) -> Rocl:
    return Rocl(model, views=cfg.view_params(), attack=cfg.attack, temperature=cfg.temperature,
                lam=cfg.lam, hidden_dim=cfg.hidden_dim, projection_dim=cfg.projection_dim, detach_keys=cfg.detach_keys)


register_method(MethodSpec(config=RoclMethod, build=_build, epoch_eval=view_similarity_fn))
