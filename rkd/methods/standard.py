"""Standard training: cross-entropy on clean images, optionally at a temperature T
(``softmax(z / T)``; T > 1 trains a defensive-distillation teacher). The model's logits are
used unscaled (T = 1) everywhere else: evaluation, attacks, soft labels are rescaled by the
distillation method itself."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rkd.config.methods import MethodConfig
from rkd.config.numbers import Number
from rkd.losses import temperature_cross_entropy
from rkd.methods.base import Method, StepOutput
from rkd.methods.registry import MethodSpec, register_method


class StandardMethod(MethodConfig):
    """Cross-entropy on clean data, optionally at a temperature: CE(softmax(z / T), y). A model
    trained at T > 1 is a defensive-distillation teacher; it is always tested at T = 1."""

    name: Literal["standard"] = "standard"
    temperature: Annotated[Number, Field(gt=0)] = 1.0


class StandardTraining(Method):
    name = "standard"

    def __init__(self, model, temperature: float = 1.0):
        super().__init__(model)
        self.temperature = float(temperature)

    def training_step(self, x, y) -> StepOutput:
        logits = self.model(x)
        ce = temperature_cross_entropy(logits, y, self.temperature)
        return StepOutput(loss=ce, terms={"ce": ce}, logits=logits)


register_method(MethodSpec(config=StandardMethod,
                           build=lambda cfg, model, models, seed: StandardTraining(model, temperature=cfg.temperature)))
