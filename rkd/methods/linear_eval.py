"""Linear evaluation of a frozen encoder (RoCL stage 2; SimCLR's protocol), with RoCL's two
options: a robust linear evaluation (the head trained on PGD examples of the frozen network,
"r-LE") and adversarial fine-tuning of the whole network.

The student is the encoder's architecture: its backbone is copied from ``encoder`` (a finished
run or a config trained once and cached, like a teacher: e.g. a ``rocl`` run) and its
classifier is a fresh linear layer. Unless ``finetune``, only the classifier is trained and the
backbone stays in eval mode (its BatchNorm statistics fixed), so the evaluated network is the
encoder's features read by a linear map. RoCL's linear evaluation trains on the un-augmented
images (``data.augment: false`` in its presets) with SGD, 150 epochs, LR /10 at 30, 50, 100.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

import torch.nn.functional as F
from pydantic import Field

from rkd.config.methods import MethodConfig
from rkd.config.schema import TeacherConfig, TrainAttackConfig
from rkd.methods.adversarial import pgd_examples
from rkd.methods.base import Method, StepOutput, freeze
from rkd.methods.registry import MethodSpec, register_method, require
from rkd.methods.teacher import init_from_teacher


def robust_linear_eval_attack() -> TrainAttackConfig:
    """RoCL's r-LE attack: Linf 8/255, 10 steps of 0.007."""
    return TrainAttackConfig(steps=10, step_size=0.007)


class LinearEvalMethod(MethodConfig):
    """A linear classifier on a frozen encoder (``finetune``: the whole network trained)."""

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("encoder",)
    name: Literal["linear_eval"]
    encoder: TeacherConfig = Field(description="the trained encoder (e.g. a rocl run), same architecture")
    adversarial: bool = Field(False, description="train on PGD examples (RoCL's robust linear evaluation, r-LE)")
    finetune: bool = Field(False, description="train the whole network, not only the classifier")
    attack: Optional[TrainAttackConfig] = Field(
        None, description="the PGD of adversarial: true (default Linf 8/255, 10 steps of 0.007, as RoCL's r-LE)")

    def check(self, cfg) -> None:
        if self.attack is not None and not self.adversarial:
            raise ValueError("method.attack applies to adversarial: true only")

    def resolved_attack(self) -> TrainAttackConfig:
        return self.attack or robust_linear_eval_attack()


class LinearEval(Method):
    name = "linear_eval"

    def __init__(self, model, *, adversarial: bool = False, finetune: bool = False,
                 attack: TrainAttackConfig | None = None):
        super().__init__(model)
        self.adversarial, self.finetune = adversarial, finetune
        self.attack = attack or robust_linear_eval_attack()
        if not finetune:
            head = {id(p) for p in model.get_classifier().parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) in head)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.finetune:  # the frozen backbone keeps its BatchNorm statistics
            self.model.eval()
            self.model.get_classifier().train()
        return self

    def training_step(self, x, y) -> StepOutput:
        if self.adversarial:
            x = pgd_examples(self.model, x, y, self.attack, self.training)
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        return StepOutput(loss=ce, terms={"ce_adv" if self.adversarial else "ce": ce}, logits=logits.detach())


def _build(cfg: LinearEvalMethod, model, models, seed) -> LinearEval:
    init_from_teacher(model, freeze(require(models, "encoder", cfg.name)))
    return LinearEval(model, adversarial=cfg.adversarial, finetune=cfg.finetune, attack=cfg.resolved_attack())


register_method(MethodSpec(config=LinearEvalMethod, build=_build))
