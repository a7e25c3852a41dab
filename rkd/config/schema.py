"""Typed schema of an experiment config (one YAML file = one run).

Every section forbids unknown keys, checks types and ranges, and reports the dotted key path
(see :mod:`rkd.config.loader`). Floats accept paper notation (``8/255``, ``5e-4``).

Top level::

    name, seed, device, output_dir
    data:     which dataset, split/subset, batch sizes, augmentation
    model:    architecture and its size knobs
    method:   training method and its hyperparameters (``name`` selects the method)
    train:    epochs, optimiser, LR schedule, AMP, checkpointing
    eval:     the robust-accuracy grid and an optional PGD step-count sweep
    tracking: MLflow
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rkd.config.numbers import Number, format_eps

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "svhn", "imagenet32")
NORMS = ("linf", "l2")
ATTACK_KINDS = ("fgsm", "pgd", "mifgsm", "cw", "autoattack", "jitter", "square")


class Strict(BaseModel):
    """Base: unknown keys are errors, no type coercion (``epochs: true`` or ``epochs: "3"`` are
    errors; only float fields parse strings, for paper notation like ``8/255`` or ``5e-4``),
    assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


# --------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: str = "./data"
    download: bool = False
    verify: bool = Field(True, description="check torchvision's md5 of CIFAR/SVHN files (off: existence only)")
    half: Optional[Literal["first", "second"]] = Field(
        None, description="keep one deterministic stratified half of the TRAIN set (the papers' +/-)"
    )
    classes: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        None, description="keep only these classes (labels remapped to 0..k-1)"
    )
    limit_train: Optional[Annotated[int, Field(gt=0)]] = None
    limit_test: Optional[Annotated[int, Field(gt=0)]] = None
    augment: bool = True
    flip: bool = True
    batch_size: Annotated[int, Field(gt=0)] = 128
    eval_batch_size: Annotated[int, Field(gt=0)] = 256
    num_workers: Annotated[int, Field(ge=0)] = 0
    split_seed: int = 0

    @model_validator(mode="after")
    def _classes_unique(self):
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError("data.classes must list at least two distinct class indices")
        return self


# -------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
    """Architecture and size knobs; only the knobs an architecture takes may be set (checked
    at validation by building the model on the meta device, which allocates no weights)."""

    arch: str = "resnet18"
    width: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="base channels (ResNet 64, WRN 16)")
    layers: Optional[list[Annotated[int, Field(gt=0)]]] = Field(
        None, description="blocks per stage (ResNet); None = the architecture's own"
    )
    depth: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="WideResNet depth (6n+4); ViT blocks")
    widen_factor: Optional[Annotated[int, Field(gt=0)]] = None
    dropout: Optional[Annotated[float, Field(ge=0, lt=1)]] = Field(None, description="dropout inside WRN blocks")
    drop_rate: Optional[Annotated[float, Field(ge=0, lt=1)]] = Field(None, description="dropout before the head")
    weights_path: Optional[str] = Field(None, description="local state_dict for the torchvision models")
    pretrained: Optional[bool] = Field(None, description="torchvision ImageNet weights (needs internet or cache)")
    input_size: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="resize inputs (bilinear, inside the model) to this side, e.g. 224 for the MACD "
        "paper's models on 32x32 CIFAR; attacks and eps stay in the data's pixel space")
    # ViT / MAE teacher knobs (mae_vit_*; 'depth' is the encoder depth)
    img_size: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="MAE: input side it patchifies")
    patch_size: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="MAE: patch side (the teacher's patch1)")
    embed_dim: Optional[Annotated[int, Field(gt=0)]] = None
    num_heads: Optional[Annotated[int, Field(gt=0)]] = None
    decoder_embed_dim: Optional[Annotated[int, Field(gt=0)]] = None
    decoder_depth: Optional[Annotated[int, Field(ge=0)]] = None
    decoder_num_heads: Optional[Annotated[int, Field(gt=0)]] = None
    norm_pix_loss: Optional[bool] = None
    fusion: Optional[Literal["add", "concat_linear"]] = Field(None, description="MACD feature module fusion")
    softmax_dim: Optional[Literal["channel", "token"]] = Field(None, description="MACD feature module softmax axis")
    cls_separate: Optional[bool] = None
    pool: Optional[Literal["cls", "mean"]] = Field(None, description="MAE teacher: [CLS] token or mean of tokens")

    @model_validator(mode="after")
    def _known_arch_and_knobs(self):
        # The model registry is the one place that knows the architectures; it is imported
        # lazily so that loading the config layer stays light (no torch until validation).
        import re

        from rkd.models import list_models

        if self.arch not in list_models():
            raise ValueError(f"unknown arch {self.arch!r}; valid: {', '.join(sorted(list_models()))}")
        try:
            self.meta_model()
        except TypeError as exc:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            key = f"model.{m.group(1)}" if m else "model"
            raise ValueError(f"{self.arch} does not take {key} ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"{self.arch}: {exc}") from None
        return self

    def kwargs(self) -> dict:
        """Keyword arguments for :func:`rkd.models.create_model` (only the ones that are set;
        ``input_size`` is applied after construction, see :func:`rkd.models.set_input_size`)."""
        return {k: v for k, v in self.model_dump(exclude={"arch", "input_size"}).items() if v is not None}

    def meta_model(self):
        """The architecture built on the meta device (module graph only, no weights, no files)."""
        import torch

        from rkd.models import create_model

        structural = {k: v for k, v in self.kwargs().items() if k not in ("weights_path", "pretrained")}
        with torch.device("meta"):
            return create_model(self.arch, **structural)


# ------------------------------------------------------------------------------------ attacks
class AttackConfig(Strict):
    """One attack of an evaluation grid (or of a training method)."""

    kind: Literal[ATTACK_KINDS] = "pgd"  # type: ignore[valid-type]
    name: Optional[str] = Field(None, description="label in tables; derived when omitted")
    norm: Literal[NORMS] = "linf"  # type: ignore[valid-type]
    eps: Annotated[Number, Field(ge=0)] = 8 / 255
    steps: Annotated[int, Field(ge=0)] = 7
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(
        None, description="default 2.5*eps/steps (Madry et al.)"
    )
    restarts: Annotated[int, Field(ge=1)] = 1
    random_start: bool = True
    # CW / AutoAttack / Square / Jitter specifics
    c: Annotated[Number, Field(gt=0)] = 1.0
    kappa: Annotated[Number, Field(ge=0)] = 0.0
    lr: Annotated[Number, Field(gt=0)] = 0.01
    n_queries: Annotated[int, Field(gt=0)] = 1000
    version: Literal["standard", "plus", "rand"] = "standard"

    #: keys that mean something for each kind (besides kind, name, eps)
    KEYS_BY_KIND: ClassVar[dict[str, set[str]]] = {
        "fgsm": {"norm"},
        "pgd": {"norm", "steps", "step_size", "restarts", "random_start"},
        "mifgsm": {"norm", "steps"},
        "cw": {"c", "kappa", "steps", "lr"},
        "autoattack": {"norm", "version"},
        "jitter": {"norm", "steps", "step_size"},
        "square": {"norm", "n_queries"},
    }

    @model_validator(mode="after")
    def _consistent(self):
        # a key that does not apply to this kind must keep its default (a dumped, fully
        # resolved config spells every key out, so "set" alone cannot be the test)
        unused = sorted(k for k in self.model_fields_set - {"kind", "name", "eps"} - self.KEYS_BY_KIND[self.kind]
                        if getattr(self, k) != type(self).model_fields[k].default)
        if unused:
            raise ValueError(f"{', '.join(unused)} do(es) not apply to a {self.kind} attack")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"Linf eps {self.eps} is larger than the [0,1] pixel range; write e.g. 8/255")
        if self.kind in ("fgsm", "mifgsm", "jitter") and self.norm != "linf":
            raise ValueError(f"{self.kind} is an Linf attack; set norm: linf")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        eps = format_eps(self.eps, self.norm)
        if self.kind == "fgsm":
            return f"FGSM {eps}"
        if self.kind == "pgd":
            return f"PGD-{self.steps} {self.norm.upper() if self.norm == 'l2' else 'Linf'} {eps}"
        if self.kind == "cw":
            return f"CW c={self.c:g}"
        return f"{self.kind} {self.norm} {eps}"

    def attack_params(self) -> dict:
        """Keyword arguments for :func:`rkd.attacks.build_attack` of this kind."""
        k = self.kind
        if k == "fgsm":
            return {"eps": self.eps}
        if k == "pgd":
            return {"norm": self.norm, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                    "random_start": self.random_start, "restarts": self.restarts}
        if k == "mifgsm":
            return {"eps": self.eps, "steps": self.steps}
        if k == "cw":
            return {"c": self.c, "kappa": self.kappa, "steps": self.steps, "lr": self.lr}
        if k == "autoattack":
            return {"norm": self.norm, "eps": self.eps, "version": self.version}
        if k == "jitter":
            return {"eps": self.eps, "steps": self.steps, "alpha": self.step_size}
        if k == "square":
            return {"norm": self.norm, "eps": self.eps, "n_queries": self.n_queries}
        raise AssertionError(k)


class TrainAttackConfig(Strict):
    """The inner maximisation of adversarial training (Madry et al.: PGD from a random start,
    attack run in the model's train mode as in Madry's and Rice et al.'s code)."""

    norm: Literal[NORMS] = "linf"  # type: ignore[valid-type]
    eps: Annotated[Number, Field(gt=0)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 7
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(None, description="default 2.5*eps/steps")
    random_start: bool = True
    mode: Literal["train", "eval"] = Field(
        "train", description="model mode while the attack runs (BatchNorm statistics)"
    )

    @model_validator(mode="after")
    def _range(self):
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"Linf eps {self.eps} is larger than the [0,1] pixel range; write e.g. 8/255")
        return self


class TradesAttackConfig(TrainAttackConfig):
    """TRADES' inner maximisation of KL(f(x') || f(x)), as in the authors' code: eval mode,
    start at x + 0.001 * N(0, 1) (a start exactly at x has zero KL gradient)."""

    mode: Literal["train", "eval"] = "eval"

    @model_validator(mode="after")
    def _needs_start(self):
        if not self.random_start:
            raise ValueError("TRADES needs its random start: at x itself the KL gradient is zero")
        return self


# ------------------------------------------------------------------------------------ methods
class StandardMethod(Strict):
    """Cross-entropy on clean data, optionally at a temperature: CE(softmax(z / T), y). A model
    trained at T > 1 is a defensive-distillation teacher; it is always tested at T = 1."""

    name: Literal["standard"] = "standard"
    temperature: Annotated[Number, Field(gt=0)] = 1.0


class AdversarialMethod(Strict):
    """Madry et al. PGD adversarial training: CE on the PGD examples."""

    name: Literal["adversarial"]
    attack: TrainAttackConfig = Field(default_factory=TrainAttackConfig)


class TradesMethod(Strict):
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(f(x_adv) || f(x))."""

    name: Literal["trades"]
    beta: Annotated[Number, Field(ge=0)] = 6.0
    attack: TradesAttackConfig = Field(default_factory=TradesAttackConfig)


class TeacherConfig(Strict):
    """Where a distillation method's teacher comes from: exactly one of

    ``run_dir``
        a finished run directory (its ``config.yaml`` and verified ``model.pt``);
    ``config``
        an experiment config (a path, relative to the working directory, or ``preset:NAME``)
        plus ``overrides``: trained once and cached under ``cache_dir`` by the hash of its
        resolved config, reused by every later run that names the same teacher.

    The teacher is frozen (eval mode, no gradients) and never checkpointed with the student.
    """

    run_dir: Optional[str] = None
    config: Optional[str] = None
    overrides: list[str] = Field(default_factory=list)
    cache_dir: str = Field("runs/teachers", description="where teachers given by 'config' are trained and kept")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.run_dir is None) == (self.config is None):
            raise ValueError("give exactly one of teacher.run_dir (a finished run) or teacher.config (trained once, cached)")
        if self.overrides and self.config is None:
            raise ValueError("teacher.overrides apply to teacher.config only")
        if self.config is not None:
            # validate the teacher's config now, so that a bad one fails before any work starts
            from rkd.config.errors import ConfigError
            from rkd.config.loader import load_config

            try:
                load_config(self.config, self.overrides)
            except (ConfigError, OSError) as exc:
                raise ValueError(f"teacher config: {exc}") from None
        return self


STAGE = Annotated[int, Field(ge=1)]


class _DistillationMethod(Strict):
    """Common to the methods that learn from a frozen teacher."""

    teacher: TeacherConfig
    init: Literal["teacher", "scratch"] = Field(
        "teacher", description="student starts from the teacher's weights with a new head, or from scratch"
    )


class RobustKDMethod(_DistillationMethod):
    """Robust-KD (Zhang & Yi 2021), eq. 21: CE + beta * L_fm + gamma * L_J on clean data."""

    name: Literal["robust_kd"]
    beta: Annotated[Number, Field(ge=0)] = 50.0
    gamma: Annotated[Number, Field(ge=0)] = 5e3
    stages: list[STAGE] = Field(default_factory=lambda: [1, 2, 3, 4], description="stages of L_fm (1-based)")
    jacobian_stages: Optional[list[STAGE]] = Field(None, description="stages of L_J; None = the same as 'stages'")
    feature_distance: Literal["cosine", "l2", "mse"] = "cosine"
    n_proj: Annotated[int, Field(ge=1)] = 1
    jacobian_estimator: Literal["per_stage", "joint"] = Field(
        "joint", description="joint: one product for all stages (unbiased estimate of the per-stage loss, "
        "the cost of one stage); per_stage: Algorithm 1 as printed, one product per stage"
    )
    projections: Literal["mean", "sum"] = Field("mean", description="reduction over the n_proj draws")

    @model_validator(mode="after")
    def _stages(self):
        for key in ("stages", "jacobian_stages"):
            st = getattr(self, key)
            if st is not None and (not st or len(set(st)) != len(st)):
                raise ValueError(f"method.{key} must list distinct stage numbers (1-based), got {st}")
        return self

    @property
    def constrained_jacobian_stages(self) -> list[int]:
        return list(self.jacobian_stages if self.jacobian_stages is not None else self.stages)


class ShafahiMethod(_DistillationMethod):
    """Shafahi et al. (2019): CE + lam * ||GAP(f_last^S) - GAP(f_last^T)||^2 on clean data."""

    name: Literal["shafahi"]
    lam: Annotated[Number, Field(ge=0)] = 1.0


class DefensiveDistillationMethod(_DistillationMethod):
    """Papernot et al. (2016): a student trained at temperature T on the soft labels of a
    teacher trained at the same T; tested at T = 1."""

    name: Literal["defensive_distillation"]
    temperature: Annotated[Number, Field(gt=0)] = 20.0
    init: Literal["teacher", "scratch"] = "scratch"


class MaeMethod(Strict):
    """MACD stage 1 (Zhang & Dong 2024, Algorithm 1): train the MAE teacher (``model.arch``
    ``mae_vit_*``) on the training images (labels unused).

    ``stage: reconstruction`` is the plain MAE (masked-patch MSE; the paper: 100 epochs);
    ``stage: feature`` trains with the feature-learning module on
    ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)`` (the paper: 20 epochs), starting from the weights
    of a reconstruction run given in ``start_from`` (a finished run directory, or a config
    trained once and cached, like a teacher). The saved ``model.pt`` is the whole teacher
    (encoder, decoder, feature module)."""

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


class OneTimeAttackConfig(Strict):
    """MACD stage 2: the PGD attack run once against the source (standard) model; its examples
    are cached on disk (content-addressed, lossless) and reused every epoch."""

    norm: Literal[NORMS] = "linf"  # type: ignore[valid-type]
    eps: Annotated[Number, Field(gt=0)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 40
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(None, description="default 2.5*eps/steps")
    random_start: bool = True

    @model_validator(mode="after")
    def _range(self):
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"Linf eps {self.eps} is larger than the [0,1] pixel range; write e.g. 8/255")
        return self

    def attack_params(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start}


class MacdMethod(_DistillationMethod):
    """MACD stage 3 (Zhang & Dong 2024, Algorithm 2): contrastive distillation from a frozen MAE
    teacher into a CNN student.

    Each step: the teacher sees the one-time adversarial example of each image (made once by
    PGD against ``source``), MAE-masked at ``teacher_mask_ratio`` with the teacher's own patch
    size (visible patches only); the student sees the clean image with ``student_mask_ratio``
    of its ``student_patch`` squares zeroed. ``L = CE(head(S), y) + weight * (KL + normalised
    L2)(S, P(T))`` with ``S`` the student's pooled backbone features and ``P`` a projection of
    the teacher's features to the student's width.

    Ablations (the paper's Tables 7-9): ``adversarial: false`` (the teacher sees the clean
    image), ``masking: false`` (no masking on either side), ``distill: self`` (contrastive
    learning only: the target is the student's own features of the adversarial image, no MAE).
    """

    name: Literal["macd"]
    teacher: Optional[TeacherConfig] = Field(None, description="the MAE teacher (a method 'mae' stage 'feature' run)")
    source: TeacherConfig = Field(description="the standard model attacked once (and the transfer protocol's source)")
    init: Literal["source", "scratch"] = Field(
        "source", description="student starts from the source model's weights (the paper's 10 distillation "
        "epochs assume a trained network) or from scratch")
    attack: OneTimeAttackConfig = Field(default_factory=OneTimeAttackConfig)
    cache_dir: str = Field("runs/adv_cache", description="the on-disk adversarial cache")
    teacher_mask_ratio: Annotated[Number, Field(ge=0, lt=1)] = Field(0.75, description="ratio1 (patch1 = the MAE's patch size)")
    student_patch: Annotated[int, Field(ge=1)] = Field(
        8, description="patch2, in pixels of the student's input (model.input_size when set, else the data's)")
    student_mask_ratio: Annotated[Number, Field(ge=0, lt=1)] = Field(0.7, description="ratio2")
    adversarial: bool = Field(True, description="false: the teacher sees clean images (Table 7)")
    masking: bool = Field(True, description="false: neither side is masked (Table 8)")
    distill: Literal["mae", "self"] = Field("mae", description="self: contrastive only, no MAE teacher (Table 9)")
    projection: Literal["fixed", "learned"] = Field(
        "fixed", description="matching widths: fixed = the teacher's features through a fixed random Gaussian "
        "map to the student's width; learned = the student's features through a trained linear layer to the "
        "teacher's width (the target is never trained either way)")
    tau: Annotated[Number, Field(gt=0)] = Field(1.0, description="softmax temperature of the KL term")
    weight: Annotated[Number, Field(ge=0)] = Field(1.0, description="weight of L_robust against CE")

    @model_validator(mode="after")
    def _teacher_needed(self):
        if (self.teacher is None) != (self.distill == "self"):
            raise ValueError("method.teacher (an MAE run) is required with distill 'mae' and unused with 'self'")
        if not self.adversarial and self.distill == "self":
            raise ValueError("distill 'self' contrasts the clean and adversarial views: it needs adversarial: true")
        return self


MethodConfig = Annotated[
    Union[StandardMethod, AdversarialMethod, TradesMethod, RobustKDMethod, ShafahiMethod,
          DefensiveDistillationMethod, MaeMethod, MacdMethod],
    Field(discriminator="name"),
]
METHOD_NAMES = ("standard", "adversarial", "trades", "robust_kd", "shafahi", "defensive_distillation", "mae", "macd")


# -------------------------------------------------------------------------------------- train
class TrainConfig(Strict):
    epochs: Annotated[int, Field(gt=0)] = 10
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Annotated[Number, Field(gt=0)] = 0.1
    momentum: Annotated[Number, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[Number, Field(ge=0)] = 5e-4
    nesterov: bool = False
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="epochs at which 'step' multiplies the LR by lr_decay"
    )
    lr_decay: Annotated[Number, Field(gt=0, le=1)] = 0.1
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    amp: bool = False
    grad_clip: Optional[Annotated[Number, Field(gt=0)]] = None
    checkpoint_every: Annotated[int, Field(gt=0)] = 1
    keep_checkpoints: Annotated[int, Field(gt=0)] = 2
    eval_every: Annotated[int, Field(ge=0)] = Field(1, description="clean test accuracy every N epochs; 0 = never")
    progress: Literal["auto", "bar", "log", "none"] = "auto"

    @model_validator(mode="after")
    def _schedule(self):
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs train.milestones")
        if any(m > self.epochs for m in self.milestones):
            raise ValueError(f"train.milestones {self.milestones} lie beyond train.epochs={self.epochs}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError("train.warmup_epochs must be smaller than train.epochs")
        if any(m <= self.warmup_epochs for m in self.milestones):
            raise ValueError(f"train.milestones {self.milestones} must come after the warm-up ({self.warmup_epochs} epochs)")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer 'sgd' only")
        return self


# --------------------------------------------------------------------------------------- eval
def _robust_kd_grid() -> list[AttackConfig]:
    """The Robust-KD paper's white-box grid: FGSM 4/255, 8/255; L2 PGD 0.25, 0.5; Linf PGD 4/255, 8/255."""
    return [
        AttackConfig(kind="fgsm", eps=4 / 255),
        AttackConfig(kind="fgsm", eps=8 / 255),
        AttackConfig(kind="pgd", norm="l2", eps=0.25, steps=7),
        AttackConfig(kind="pgd", norm="l2", eps=0.5, steps=7),
        AttackConfig(kind="pgd", norm="linf", eps=4 / 255, steps=7),
        AttackConfig(kind="pgd", norm="linf", eps=8 / 255, steps=7),
    ]


class StepSweepConfig(Strict):
    """PGD accuracy as a function of the number of steps (Robust-KD Figures 4-5)."""

    norm: Literal[NORMS] = "l2"  # type: ignore[valid-type]
    eps: Annotated[Number, Field(gt=0)] = 0.5
    steps: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 7, 25, 100])
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(
        None, description="fixed step size; default 2.5*eps/steps for each step count"
    )

    @model_validator(mode="after")
    def _nonempty(self):
        if not self.steps:
            raise ValueError("eval.step_sweep.steps must not be empty")
        return self


class JsmaEvalConfig(Strict):
    """Targeted JSMA success rate (Papernot et al.), the attack defensive distillation was
    evaluated with. ``saliency`` lists which forward derivative to use: ``probabilities`` (the
    2016 papers: vanishes for a distilled network at T = 1) and/or ``logits`` (Carlini & Wagner's
    re-evaluation). Attacks those of the first ``max_samples`` test images that the model
    classifies correctly, with one random wrong target each (``targets: random``) or all of them."""

    max_samples: Annotated[int, Field(gt=0)] = 100
    targets: Literal["random", "all"] = "random"
    theta: Annotated[Number, Field(gt=-1, le=1)] = 1.0
    gamma: Annotated[Number, Field(gt=0, le=1)] = 0.145
    saliency: list[Literal["probabilities", "logits"]] = Field(default_factory=lambda: ["probabilities", "logits"])

    @model_validator(mode="after")
    def _valid(self):
        if self.theta == 0:
            raise ValueError("eval.jsma.theta must be non-zero")
        if not self.saliency or len(set(self.saliency)) != len(self.saliency):
            raise ValueError("eval.jsma.saliency must list distinct entries of [probabilities, logits]")
        return self


def _macd_transfer_grid() -> list[AttackConfig]:
    """The MACD paper's grid: FGSM, PGD, AutoAttack (L2) and Jitter at eps 8/255 and 16/255
    (eps in [0, 1] pixel units; the PGD step count is not stated, 20 here)."""
    grid = []
    for e, tag in ((8 / 255, "8/255"), (16 / 255, "16/255")):
        grid += [AttackConfig(kind="fgsm", eps=e), AttackConfig(kind="pgd", eps=e, steps=20),
                 AttackConfig(kind="autoattack", norm="l2", eps=e, name=f"AutoAttack-L2 {tag}"),
                 AttackConfig(kind="jitter", eps=e, name=f"Jitter {tag}")]
    return grid


class TransferEvalConfig(Strict):
    """MACD's published protocol: the attacks run against a ``source`` model (the standard
    model), and their examples are classified by the evaluated model. Reported next to the
    white-box grid, each entry labelled ``protocol: transfer`` with its source. The source's
    examples are cached on disk (content-addressed) so that every model evaluated against the
    same source sees the same examples."""

    source: Optional[TeacherConfig] = Field(None, description="default: method.source of a macd run")
    attacks: list[AttackConfig] = Field(default_factory=_macd_transfer_grid)
    cache_dir: str = "runs/adv_cache"

    @model_validator(mode="after")
    def _valid(self):
        if not self.attacks:
            raise ValueError("eval.transfer.attacks must not be empty")
        labels = [a.label for a in self.attacks]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"eval.transfer.attacks has duplicate labels {sorted(dup)}; give them distinct 'name's")
        return self


class EvalConfig(Strict):
    enabled: bool = True
    attacks: list[AttackConfig] = Field(default_factory=_robust_kd_grid)
    step_sweep: Optional[StepSweepConfig] = None
    jsma: Optional[JsmaEvalConfig] = None
    input_gradient: bool = Field(
        False, description="mean L1/L2 norm of the input gradient of the CE loss (at T = 1) over the test subset"
    )
    transfer: Optional[TransferEvalConfig] = Field(None, description="MACD's transfer protocol, next to the white-box grid")
    max_samples: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="evaluate on the first N test samples (deterministic); None = all"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _unique_labels(self):
        labels = [a.label for a in self.attacks]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"eval.attacks has duplicate labels {sorted(dup)}; give them distinct 'name's")
        return self


# ----------------------------------------------------------------------------------- tracking
class TrackingConfig(Strict):
    enabled: bool = True
    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir"
    )
    experiment: str = "rkd"
    log_model: bool = True


# ------------------------------------------------------------------------------------ scaling
class ScalingConfig(Strict):
    """How a run is executed: in-process (``num_workers: 0``, no Ray) or as a Ray Train
    TorchTrainer with ``num_workers`` data-parallel workers (gradients averaged over the process
    group: NCCL on GPUs, gloo on CPU), each with ``resources_per_worker``. ``max_failures``:
    worker-group restarts from the last checkpoint (-1: unlimited). ``storage_path``: where Ray
    keeps checkpoints (must be shared by all nodes on a multi-node cluster); default
    ``<output_dir>/ray_results``."""

    num_workers: Annotated[int, Field(ge=0)] = 0
    use_gpu: bool = False
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    max_failures: Annotated[int, Field(ge=-1)] = 0
    storage_path: Optional[str] = None


# --------------------------------------------------------------------------------- experiment
class ExperimentConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")] = "experiment"
    seed: int = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")] = "auto"
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = StandardMethod()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)

    @model_validator(mode="after")
    def _mae_and_macd(self):
        m = self.method
        is_mae_arch = self.model.arch.startswith("mae_")
        if m.name == "mae":
            if not is_mae_arch:
                raise ValueError(f"method mae trains an MAE teacher: set model.arch to an mae_vit_* model, not {self.model.arch}")
            if self.eval.enabled:
                raise ValueError("method mae trains a feature extractor without a classifier: set eval.enabled: false")
        elif is_mae_arch:
            raise ValueError(f"{self.model.arch} has no classifier; it is trained by method mae only")
        if self.eval.transfer is not None and self.eval.transfer.source is None and m.name != "macd":
            raise ValueError("eval.transfer.source is required (only a macd run defaults to its method.source)")
        if m.name == "macd":
            from rkd.data import dataset_info

            side = self.model.input_size or dataset_info(self.data.dataset).image_shape[-1]
            if side % m.student_patch:
                raise ValueError(f"method.student_patch {m.student_patch} must divide the image side {side} "
                                 "(the model's input_size when set: the student is masked at that size)")
            if m.teacher is not None and m.teacher.config is not None:
                from rkd.config.loader import load_config

                t = load_config(m.teacher.config, m.teacher.overrides)
                if t.method.name != "mae":
                    raise ValueError(f"method.teacher must be an MAE run (method mae), got method {t.method.name}")
        return self

    @model_validator(mode="after")
    def _stages_exist(self):
        if self.method.name == "robust_kd":
            n = self.model.meta_model().num_stages
            for key in ("stages", "jacobian_stages"):
                st = getattr(self.method, key) or []
                if any(i > n for i in st):
                    raise ValueError(f"method.{key} {st}: {self.model.arch} has stages 1..{n}")
        return self
