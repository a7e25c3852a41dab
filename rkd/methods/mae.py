"""MACD stage 1: training the masked-autoencoder teacher (Zhang & Dong 2024, Algorithm 1).

``reconstruction`` -- the plain MAE objective (MSE on the masked patches), the paper's first
100 epochs. ``feature`` -- eq. 4, ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)`` through the
feature-learning module, the paper's 20 further epochs from the stage-1 weights. The model is a
:class:`rkd.models.mae.MAETeacher`; labels are ignored and there are no logits.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

import torch
from pydantic import Field, model_validator

from rkd.config.methods import MethodConfig
from rkd.config.numbers import Number
from rkd.config.schema import TeacherConfig
from rkd.methods.base import Method, StepOutput
from rkd.methods.registry import MethodSpec, register_method
from rkd.models.modes import evaluation_mode


class MaeMethod(MethodConfig):
    """MACD stage 1 (Zhang & Dong 2024, Algorithm 1): train the MAE teacher (``model.arch``
    ``mae_vit_*``) on the training images (labels unused).

    ``stage: reconstruction`` is the plain MAE (masked-patch MSE; the paper: 100 epochs);
    ``stage: feature`` trains with the feature-learning module on
    ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)`` (the paper: 20 epochs), starting from the weights
    of a reconstruction run given in ``start_from`` (a finished run directory, or a config
    trained once and cached, like a teacher). The saved ``model.pt`` is the whole teacher
    (encoder, decoder, feature module)."""

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("start_from",)
    CLASSIFIER: ClassVar[bool] = False
    name: Literal["mae"]
    stage: Literal["reconstruction", "feature"] = "reconstruction"
    mask_ratio: Annotated[Number, Field(ge=0, lt=1)] = Field(
        0.75, description="fraction of patches hidden from the encoder (paper: 0.75 in the training details, "
        "0.85 in its Table 5)")
    start_from: Optional[TeacherConfig] = Field(None, description="the reconstruction run stage 'feature' starts from")

    @model_validator(mode="after")
    def _start(self):
        if self.stage == "feature" and self.start_from is None:
            raise ValueError("method.stage 'feature' starts from a stage-'reconstruction' run: set method.start_from")
        if self.stage == "reconstruction" and self.start_from is not None:
            raise ValueError("method.start_from applies to stage 'feature' only")
        return self

    def check(self, cfg) -> None:
        if not cfg.model.arch.startswith("mae_"):
            raise ValueError(f"method mae trains an MAE teacher: set model.arch to an mae_vit_* model, "
                             f"not {cfg.model.arch}")
        if cfg.eval.enabled:
            raise ValueError("method mae trains a feature extractor without a classifier: set eval.enabled: false")


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


def load_start(model, state: dict) -> None:
    """Stage-1 weights into the stage-2 teacher: everything but the feature module must match
    (stage 1 may have used another fusion; its feature module was never trained anyway)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("feature_module.")] + [
        k for k in unexpected if not k.startswith("feature_module.")]
    if bad:
        raise ValueError(f"method.start_from: its weights do not fit this MAE ({bad[:4]}); use the same MAE sizes")


def _build(cfg: MaeMethod, model, models, seed) -> MaeTraining:
    if models.get("start_from") is not None:  # stage 2 starts from stage 1's weights
        load_start(model, models["start_from"].state_dict())
    return MaeTraining(model, stage=cfg.stage, mask_ratio=cfg.mask_ratio)


def mae_loss_fn(cfg, data, device, max_samples: int | None = None):
    """Per-epoch validation of an MAE: its training loss (of ``stage``) on (the first
    ``max_samples`` of) ``data`` -- the run's validation split, or its test images without one
    (the pipeline then reports ``test_mae_loss``) -- with masks from a fixed seed so epochs
    are comparable."""
    from rkd.data.loader import make_loader
    from rkd.evaluation.robust_accuracy import eval_subset

    loader = make_loader(eval_subset(data, max_samples), cfg.data.eval_batch_size)
    m = cfg.method

    def fn(model):
        gen = torch.Generator(device=device).manual_seed(0)
        total, n = 0.0, 0
        with evaluation_mode(model), torch.no_grad():
            for x, _ in loader:
                x = x.to(device)
                loss = (model.mae(x, m.mask_ratio, gen)[0] if m.stage == "reconstruction"
                        else model.mae_loss(x, m.mask_ratio, gen)[0])
                total += loss.item() * x.shape[0]
                n += x.shape[0]
        return {"val_mae_loss": total / max(n, 1)}

    return fn


register_method(MethodSpec(config=MaeMethod, build=_build, epoch_eval=mae_loss_fn))
