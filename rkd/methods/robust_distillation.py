"""What the adversarial robustness distillation family (ARD, RSLAD, IAD, MTARD, AdaAD) shares:
a robust frozen teacher, a student trained on its own adversarial examples, KL to the teacher's
soft labels (:func:`rkd.losses.soft_label_kl`), and an inner attack with the family's budget
(Linf 8/255, step 2/255, 10 steps).

Each member differs in what its inner attack maximises (:class:`InnerObjective`):

``ce``
    the student's cross-entropy on the true label (ARD, IAD, MTARD);
``kl_clean_teacher``
    KL(T(x) || S(x')) against the teacher's soft labels of the clean image (RSLAD);
``kl_moving_teacher``
    KL(T(x') || S(x')), the teacher re-queried at the moving point, the gradient flowing
    through both networks (AdaAD).

and where it starts (``uniform`` in the ball, or ``gaussian``: ``x + 0.001 * N(0, 1)``) and in
which mode the student runs while it attacks -- each member's defaults are its authors' code
(PAPERS.md section 4).

One default differs from most of that code: the KL's reduction. ``batchmean`` (the KL of each
example, averaged over the batch; IAD's code) is the default, not ``nn.KLDivLoss()``'s
``mean`` over batch *and* classes (``class_mean``; ARD's, RSLAD's, MTARD's and AdaAD's
CIFAR-10 code). With every other term a KL, ``class_mean`` only divides the gradient by the
number of classes, i.e. the learning rate under SGD, so its meaning changes with the dataset
(the authors' CIFAR-100 scripts multiply by 10 to undo part of it). On digits, in the 12-epoch
recipe every row shares, ARD reached 19% clean accuracy with ``class_mean`` and 81% validation
accuracy with ``batchmean`` (README). ``kl_reduction: class_mean`` reproduces the scripts.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from rkd.attacks import pgd
from rkd.config.numbers import Number
from rkd.config.schema import TrainAttackConfig
from rkd.losses import soft_label_kl
from rkd.losses.soft_label_kl import KlReduction
from rkd.methods.base import Method, attack_mode, freeze
from rkd.methods.registry import require
from rkd.methods.teacher import DistillationConfig

InnerObjective = Literal["ce", "kl_clean_teacher", "kl_moving_teacher"]

#: the start of the KL-maximising attacks (at x itself the KL gradient can vanish: TRADES, RSLAD)
GAUSSIAN_START_STD = 0.001


class DistillAttackConfig(TrainAttackConfig):
    """The student's inner attack: Linf 8/255, 10 steps of 2/255 (the family's budget)."""

    steps: Annotated[int, Field(ge=1)] = 10
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(2 / 255, description="the family's 2/255")
    start: Literal["uniform", "gaussian"] = Field(
        "uniform", description="random start: uniform in the ball, or gaussian = x + 0.001 * N(0, 1)")


class GaussianStartAttackConfig(DistillAttackConfig):
    """The attack of RSLAD, MTARD and AdaAD: from ``x + 0.001 * N(0, 1)``, student in eval mode."""

    start: Literal["uniform", "gaussian"] = "gaussian"
    mode: Literal["train", "eval"] = "eval"


class RobustDistillationConfig(DistillationConfig):
    """Common keys of the family: the robust teacher, the student's start and the KL's form."""

    init: Literal["teacher", "scratch"] = Field(
        "scratch", description="the family trains a (smaller) student from scratch")
    kl_reduction: Literal["batchmean", "class_mean"] = Field(
        "batchmean", description="batchmean = the per-example KL averaged over the batch; class_mean = "
        "nn.KLDivLoss()'s default, also averaged over the classes (the authors' CIFAR-10 code for ARD, RSLAD, "
        "MTARD, AdaAD), which divides the gradient by the number of classes")


class StudentWithTeacher(nn.Module):
    """``x -> [S(x), T(x)]`` (concatenated logits): lets the shared PGD loop maximise a loss of
    both networks at the moving point (AdaAD)."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student, self.teacher = student, teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.student(x), self.teacher(x)], dim=1)


class RobustDistillation(Method):
    """Base of the family's methods: ``self.teacher`` is the robust frozen teacher."""

    frozen = ("teacher",)

    def __init__(self, model: nn.Module, teacher: nn.Module, *, attack: DistillAttackConfig,
                 kl_reduction: KlReduction = "batchmean"):
        super().__init__(model)
        self.teacher = teacher
        self.attack = attack
        self.kl_reduction = kl_reduction

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, teacher: nn.Module | None = None) -> torch.Tensor:
        """A frozen teacher's logits (default ``self.teacher``), without a graph."""
        return (teacher or self.teacher)(x)

    def kl(self, student_logits, teacher_logits, **kw) -> torch.Tensor:
        return soft_label_kl(student_logits, teacher_logits, reduction=kw.pop("reduction", self.kl_reduction), **kw)

    def inner_attack(self, x: torch.Tensor, y: torch.Tensor, objective: InnerObjective,
                     teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The student's adversarial examples of ``x`` for ``objective`` (``teacher_logits``:
        the teacher's clean logits, for ``kl_clean_teacher``)."""
        a = self.attack
        net, y_att, loss_fn = self.model, y, None
        if objective == "kl_clean_teacher":
            y_att = teacher_logits.detach()
            loss_fn = lambda logits, t: soft_label_kl(logits, t, reduction="none")  # noqa: E731
        elif objective == "kl_moving_teacher":
            net = StudentWithTeacher(self.model, self.teacher)
            k = self.model.num_classes
            loss_fn = lambda both, _y: soft_label_kl(both[:, :k], both[:, k:], reduction="none",  # noqa: E731
                                                     detach_target=False)
        start = None
        if a.random_start and a.start == "gaussian":
            start = (x + GAUSSIAN_START_STD * torch.randn_like(x)).clamp(0, 1)
        with attack_mode(self.model, a.mode == "train" and self.training):
            return pgd(net, x, y_att, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.step_size,
                       random_start=a.random_start and start is None, x_init=start, loss_fn=loss_fn)


def frozen_role(models: dict[str, nn.Module], role: str, method: str) -> nn.Module:
    """A further frozen network of a method (MTARD's clean teacher)."""
    return freeze(require(models, role, method))
