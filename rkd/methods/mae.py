"""MACD stage 1: training the masked-autoencoder teacher (Zhang & Dong 2024, Algorithm 1).

``reconstruction`` -- the plain MAE objective (MSE on the masked patches), the paper's first
100 epochs. ``feature`` -- eq. 4, ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)`` through the
feature-learning module, the paper's 20 further epochs from the stage-1 weights. The model is a
:class:`rkd.models.mae.MAETeacher`; labels are ignored and there are no logits.
"""

from __future__ import annotations

from rkd.methods.base import Method, StepOutput


class MaeTraining(Method):
    name = "mae"

    def __init__(self, model, *, stage: str = "reconstruction", mask_ratio: float = 0.75):
        super().__init__(model)
        if stage not in ("reconstruction", "feature"):
            raise ValueError(f"stage must be 'reconstruction' or 'feature', got {stage!r}")
        if not hasattr(model, "mae_loss"):
            raise TypeError(f"method mae trains an MAE teacher, got {type(model).__name__}")
        self.stage, self.mask_ratio = stage, float(mask_ratio)

    def training_step(self, x, y) -> StepOutput:
        if self.stage == "reconstruction":
            loss, _, _ = self.model.mae(x, self.mask_ratio)
            return StepOutput(loss=loss, terms={"recon": loss})
        loss, terms = self.model.mae_loss(x, self.mask_ratio)
        return StepOutput(loss=loss, terms=terms)
