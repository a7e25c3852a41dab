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

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rkd.config.identity import LOADER, RUN, KeyedUnlessDefault, NotInKey
from rkd.config.methods import MethodConfig, default_method, method_config_class
from rkd.config.numbers import Number, format_eps

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "svhn", "imagenet32")
#: deterministic input shifts of ``data.shift`` (rkd.data.shifts implements them)
SHIFTS = ("none", "invert", "rot90", "rot180", "rot270")
NORMS = ("linf", "l2")
ATTACK_KINDS = ("fgsm", "pgd", "mifgsm", "cw", "autoattack", "jitter", "square", "apgd", "fab")
#: the step count of an attack whose config does not give one (CW, APGD and FAB at their
#: papers' / AutoAttack's 100; the PGD family at the Robust-KD grid's 7)
DEFAULT_STEPS = {"pgd": 7, "mifgsm": 7, "jitter": 7, "cw": 100, "apgd": 100, "fab": 100}


class Strict(BaseModel):
    """Base: unknown keys are errors, no type coercion (``epochs: true`` or ``epochs: "3"`` are
    errors; only float fields parse strings, for paper notation like ``8/255`` or ``5e-4``),
    assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def check_linf_eps(norm: str, eps: float) -> None:
    if norm == "linf" and eps > 1:
        raise ValueError(f"Linf eps {eps} is larger than the [0,1] pixel range; write e.g. 8/255")


# --------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: str = "./data"
    download: Annotated[bool, NotInKey(RUN)] = False
    verify: Annotated[bool, NotInKey(RUN)] = Field(
        True, description="check torchvision's md5 of CIFAR/SVHN files (off: existence only)")
    half: Optional[Literal["first", "second"]] = Field(
        None, description="keep one deterministic stratified half of the TRAIN set (the papers' +/-)"
    )
    classes: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        None, description="keep only these classes (labels remapped to 0..k-1)"
    )
    limit_train: Optional[Annotated[int, Field(gt=0)]] = None
    limit_test: Optional[Annotated[int, Field(gt=0)]] = None
    augment: Annotated[bool, NotInKey(LOADER)] = True
    flip: Annotated[bool, NotInKey(LOADER)] = True
    batch_size: Annotated[int, Field(gt=0), NotInKey(LOADER)] = 128
    eval_batch_size: Annotated[int, Field(gt=0)] = 256
    num_workers: Annotated[int, Field(ge=0), NotInKey(LOADER)] = 0
    on_device: Annotated[Union[bool, Literal["auto"]], NotInKey(RUN)] = Field(
        "auto", description="keep the training set on the training device and gather and augment batches there "
        "(the same batches as the loader); auto = on for CUDA when the images take at most 2 GiB")
    shift: Annotated[Literal[SHIFTS], KeyedUnlessDefault()] = Field(  # type: ignore[valid-type]
        "none", description="a fixed transform of every image, train and test alike (rkd.data.shifts): none, invert "
        "(1 - x), rot90 / rot180 / rot270 (counter-clockwise); a source that shares the task but not the distribution")
    image_size: Annotated[Optional[Annotated[int, Field(gt=0)]], KeyedUnlessDefault()] = Field(
        None, description="digits/synthetic: the side the images are made at (digits are 8x8, upsampled "
        "bilinearly); None = the dataset's own (32); other datasets refuse it (see model.input_size)")
    split_seed: int = 0
    val_size: Annotated[Number, Field(ge=0)] = Field(
        0.0, description="validation images held out of the TRAIN set (stratified, seeded by split_seed): a count, "
        "or a fraction if < 1; they serve per-epoch metrics, Tune's schedulers and searchers; 0 = none")

    @model_validator(mode="after")
    def _classes_unique(self):
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError("data.classes must list at least two distinct class indices")
        return self

    @model_validator(mode="after")
    def _image_size_made_here(self):
        from rkd.data import dataset_info

        if self.image_size is not None and dataset_info(self.dataset).needs_root:
            raise ValueError(f"data.image_size applies to the datasets made in memory (digits, synthetic) only: "
                             f"{self.dataset!r} is read from files at its own size; model.input_size resizes "
                             "inside the model")
        return self

    def image_side(self) -> int:
        """The side of the images the data loader yields (``image_size`` or the dataset's own)."""
        from rkd.data import dataset_info

        return self.image_size or dataset_info(self.dataset).image_shape[-1]


# -------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
    """Architecture and size knobs; only the knobs an architecture takes may be set (checked
    by :func:`rkd.config.checks.check_config`, which builds the model on the meta device)."""

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
    channels_last: Annotated[Optional[bool], NotInKey(RUN)] = Field(
        None, description="ResNet/WRN: weights and activations in NHWC (torch.channels_last), same values; "
        "None = the method's choice (on, except Robust-KD with gamma > 0, whose double backward is slower in NHWC)")
    stem_stride: Annotated[Optional[Literal[1, 2]], KeyedUnlessDefault()] = Field(
        None, description="CIFAR-style ResNet: stride of the stem convolution (None = 1; 2 runs every stage at "
        "half the side, for inputs upsampled from a lower resolution such as the 8x8 digits)")
    input_size: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="resize inputs (bilinear, inside the model) to this side, e.g. 224 for the MACD "
        "paper's models on 32x32 CIFAR; attacks and eps stay in the data's pixel space")
    # ViT / MAE teacher knobs (mae_vit_*; 'depth' is the encoder depth)
    img_size: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="MAE: input side it patchifies")
    patch_size: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="MAE: patch side (the teacher's patch1)")
    embed_dim: Optional[Annotated[int, Field(gt=0)]] = None
    num_heads: Optional[Annotated[int, Field(gt=0)]] = None
    decoder_embed_dim: Optional[Annotated[int, Field(gt=0)]] = None
    decoder_depth: Optional[Annotated[int, Field(ge=0)]] = None
    decoder_num_heads: Optional[Annotated[int, Field(gt=0)]] = None
    norm_pix_loss: Optional[bool] = None
    fusion: Optional[Literal["add", "concat_linear", "gated"]] = Field(None, description="MACD feature module fusion")
    softmax_dim: Optional[Literal["channel", "token"]] = Field(None, description="MACD feature module softmax axis")
    cls_separate: Optional[bool] = None
    pool: Optional[Literal["cls", "mean"]] = Field(None, description="MAE teacher: [CLS] token or mean of tokens")

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
    steps: Optional[Annotated[int, Field(ge=0)]] = Field(
        None, description="iterations; default per kind (rkd.config.schema.DEFAULT_STEPS: PGD 7, CW/APGD/FAB 100)")
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(
        None, description="default 2.5*eps/steps (Madry et al.)"
    )
    restarts: Annotated[int, Field(ge=1)] = 1
    random_start: bool = True
    # CW / AutoAttack / Square / Jitter / APGD / FAB specifics
    c: Annotated[Number, Field(gt=0)] = 1.0
    kappa: Annotated[Number, Field(ge=0)] = 0.0
    lr: Annotated[Number, Field(gt=0)] = 0.01
    n_queries: Annotated[int, Field(gt=0)] = 1000
    version: Literal["standard", "plus", "rand"] = "standard"
    loss: Literal["ce", "dlr"] = Field("ce", description="APGD's loss: cross-entropy or the DLR margin")
    targets: Annotated[int, Field(ge=0)] = Field(
        0, description="APGD / FAB: 0 = untargeted; k = targeted at each of the k most likely wrong classes "
        "in turn (AutoAttack's APGD-T and FAB-T use 9)")

    #: keys that mean something for each kind (besides kind, name, eps)
    KEYS_BY_KIND: ClassVar[dict[str, set[str]]] = {
        "fgsm": {"norm"},
        "pgd": {"norm", "steps", "step_size", "restarts", "random_start"},
        "mifgsm": {"norm", "steps"},
        "cw": {"c", "kappa", "steps", "lr"},
        "autoattack": {"norm", "version"},
        "jitter": {"norm", "steps", "step_size"},
        "square": {"norm", "n_queries", "restarts"},
        "apgd": {"norm", "steps", "restarts", "loss", "targets"},
        "fab": {"norm", "steps", "restarts", "targets"},
    }

    @model_validator(mode="before")
    @classmethod
    def _default_steps(cls, data):
        if isinstance(data, dict) and data.get("steps") is None:
            kind = str(data.get("kind", "pgd"))
            if kind in DEFAULT_STEPS:
                data = {**data, "steps": DEFAULT_STEPS[kind]}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        # a key that does not apply to this kind must keep its default (a dumped, fully
        # resolved config spells every key out, so "set" alone cannot be the test)
        unused = sorted(k for k in self.model_fields_set - {"kind", "name", "eps"} - self.KEYS_BY_KIND[self.kind]
                        if getattr(self, k) != type(self).model_fields[k].default)
        if unused:
            raise ValueError(f"{', '.join(unused)} do(es) not apply to a {self.kind} attack")
        check_linf_eps(self.norm, self.eps)
        if self.kind in ("fgsm", "mifgsm", "jitter") and self.norm != "linf":
            raise ValueError(f"{self.kind} is an Linf attack; set norm: linf")
        if self.kind == "apgd" and self.targets and self.loss != "dlr":
            raise ValueError("a targeted APGD (targets > 0) uses the targeted DLR loss; set loss: dlr")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        eps = format_eps(self.eps, self.norm)
        norm = self.norm.upper() if self.norm == "l2" else "Linf"
        if self.kind == "fgsm":
            return f"FGSM {eps}"
        if self.kind == "pgd":
            return f"PGD-{self.steps} {norm} {eps}"
        if self.kind == "cw":
            return f"CW c={self.c:g}"
        if self.kind == "apgd":
            variant = f"T{self.targets}" if self.targets else self.loss.upper()
            return f"APGD-{variant}-{self.steps} {norm} {eps}"
        if self.kind == "fab":
            return f"FAB{f'-T{self.targets}' if self.targets else ''}-{self.steps} {norm} {eps}"
        if self.kind == "square":
            return f"Square-{self.n_queries} {norm} {eps}"
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
            return {"norm": self.norm, "eps": self.eps, "n_queries": self.n_queries, "n_restarts": self.restarts}
        if k == "apgd":
            return {"norm": self.norm, "eps": self.eps, "steps": self.steps, "restarts": self.restarts,
                    "loss": self.loss, "targets": self.targets}
        if k == "fab":
            return {"norm": self.norm, "eps": self.eps, "steps": self.steps, "restarts": self.restarts,
                    "targets": self.targets}
        raise AssertionError(k)

    @property
    def threat(self) -> tuple[str, float] | None:
        """``(norm, eps)`` of the ball this attack stays in; None for CW (unbounded L2)."""
        return None if self.kind == "cw" else (self.norm, float(self.eps))


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
        check_linf_eps(self.norm, self.eps)
        return self


TRADES_STEP_PER_EPS = 0.007 / 0.031  # the authors' CIFAR-10 step size over their eps


class TradesAttackConfig(TrainAttackConfig):
    """TRADES' inner maximisation of KL(f(x') || f(x)), as in the authors' code (Zhang et al.
    2019, ``train_trades_cifar10.py``): 10 steps of 0.007 at eps 0.031 (the step scales with
    eps), eval mode, start at x + 0.001 * N(0, 1) (a start exactly at x has zero KL gradient)."""

    steps: Annotated[int, Field(ge=1)] = 10
    step_size: Optional[Annotated[Number, Field(gt=0)]] = Field(
        None, description="default 0.007/0.031 * eps (the authors' 0.007 at eps 0.031)")
    mode: Literal["train", "eval"] = "eval"

    def resolved_step_size(self) -> float:
        return float(self.step_size) if self.step_size is not None else TRADES_STEP_PER_EPS * float(self.eps)

    @model_validator(mode="after")
    def _needs_start(self):
        if not self.random_start:
            raise ValueError("TRADES needs its random start: at x itself the KL gradient is zero")
        return self


# ---------------------------------------------------------------------------- trained models
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
    cache_dir: Annotated[Optional[str], NotInKey(RUN)] = Field(
        None, description="where teachers given by 'config' are trained and kept; default "
        "<output_dir>/teachers of the run that needs it")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.run_dir is None) == (self.config is None):
            raise ValueError("give exactly one of teacher.run_dir (a finished run) or teacher.config "
                             "(trained once, cached)")
        if self.overrides and self.config is None:
            raise ValueError("teacher.overrides apply to teacher.config only")
        return self  # the teacher's own config is loaded and checked by rkd.config.checks

    def resolved_cache_dir(self, output_dir: str) -> str:
        return self.cache_dir if self.cache_dir is not None else f"{output_dir}/teachers"


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
        check_linf_eps(self.norm, self.eps)
        return self

    def attack_params(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start}




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
    amp: Union[bool, Literal["bf16", "fp16"]] = Field(
        False, description="autocast: bf16 (no loss scale; inner attacks in bf16 too), fp16 (GradScaler; inner "
        "attacks in fp32), true = bf16 where the device has it, else fp16 (rkd.engine.precision)")
    tf32: Annotated[Union[bool, Literal["auto"]], NotInKey(RUN)] = Field(
        "auto", description="TF32 fp32 matmuls and cuDNN convolutions; auto = on for CUDA unless the method "
        "needs fp32 (Robust-KD's Jacobian term)")
    cudnn_benchmark: Annotated[Union[bool, Literal["auto"]], NotInKey(RUN)] = Field(
        "auto", description="cuDNN times its algorithms per input shape; auto = on for CUDA")
    fused_optimizer: Annotated[Union[bool, Literal["auto"]], NotInKey(RUN)] = Field(
        "auto", description="the optimiser's fused kernel (SGD, Adam, AdamW); auto = on for CUDA")
    compile: Annotated[bool, NotInKey(RUN)] = Field(
        False, description="torch.compile the trained network's forward (not with a double backward: Robust-KD's "
        "Jacobian term); off by default: compile time, and one graph per train/eval switch of the inner attacks")
    grad_clip: Optional[Annotated[Number, Field(gt=0)]] = None
    on_divergence: Annotated[Literal["error", "warn"], NotInKey(RUN)] = Field(
        "error", description="a non-finite epoch loss ends the run (error) or is a warning (warn: --smoke, where "
        "one-epoch teachers on 16 images make the numerics meaningless)")
    checkpoint_every: Annotated[int, Field(gt=0), NotInKey(RUN)] = 1
    keep_checkpoints: Annotated[int, Field(gt=0), NotInKey(RUN)] = Field(
        2, description="newest trainer checkpoints kept (on disk and by Ray Train)")
    eval_every: Annotated[int, Field(ge=0), NotInKey(RUN)] = Field(
        1, description="per-epoch validation every N epochs; 0 = never")
    progress: Annotated[Literal["auto", "bar", "log", "none"], NotInKey(RUN)] = "auto"

    @model_validator(mode="after")
    def _schedule(self):
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs train.milestones")
        if any(m > self.epochs for m in self.milestones):
            raise ValueError(f"train.milestones {self.milestones} lie beyond train.epochs={self.epochs}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError("train.warmup_epochs must be smaller than train.epochs")
        if any(m <= self.warmup_epochs for m in self.milestones):
            raise ValueError(f"train.milestones {self.milestones} must come after the warm-up "
                             f"({self.warmup_epochs} epochs)")
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

    source: Optional[TeacherConfig] = Field(
        None, description="default: the method's own source model (MACD's method.source), if it has one")
    attacks: list[AttackConfig] = Field(default_factory=_macd_transfer_grid)
    cache_dir: Optional[str] = Field(None, description="the on-disk adversarial cache; default <output_dir>/adv_cache")

    @model_validator(mode="after")
    def _valid(self):
        if not self.attacks:
            raise ValueError("eval.transfer.attacks must not be empty")
        labels = [a.label for a in self.attacks]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"eval.transfer.attacks has duplicate labels {sorted(dup)}; give them distinct 'name's")
        return self


class ThreatConfig(Strict):
    """A threat model: the ``norm`` ball of radius ``eps`` (pixel units) around each image."""

    norm: Literal[NORMS] = "linf"  # type: ignore[valid-type]
    eps: Annotated[Number, Field(gt=0)] = 8 / 255

    @model_validator(mode="after")
    def _range(self):
        check_linf_eps(self.norm, self.eps)
        return self


def _autoattack_suite() -> list[AttackConfig]:
    """The reference AutoAttack "standard" set (Croce & Hein 2020; RobustBench): APGD-CE,
    APGD-T (targeted DLR, 9 target classes), FAB-T (9 targets), 100 iterations each, and
    Square with 5000 queries."""
    return [AttackConfig(kind="apgd", loss="ce", steps=100),
            AttackConfig(kind="apgd", loss="dlr", targets=9, steps=100),
            AttackConfig(kind="fab", targets=9, steps=100),
            AttackConfig(kind="square", n_queries=5000)]


def _fast_suite() -> list[AttackConfig]:
    """A cheaper cascade for CPU runs, named for what it is: APGD-CE and APGD-T with the 3 most
    likely wrong classes, 50 iterations each (no FAB, no Square)."""
    return [AttackConfig(kind="apgd", loss="ce", steps=50), AttackConfig(kind="apgd", loss="dlr", targets=3, steps=50)]


WORST_CASE_SUITES = {"autoattack": _autoattack_suite, "fast": _fast_suite}


class WorstCaseConfig(Strict):
    """The headline robust accuracy: per threat model, the per-example worst case over every
    white-box attack of the grid in that ball and the ``suite`` run as a cascade (each attack
    only on the points still robust, the AutoAttack way). ``suite`` names a set
    (``autoattack``: the reference; ``fast``: cheaper, see :func:`_fast_suite`) or lists attacks
    whose norm and eps come from each threat (give neither)."""

    enabled: bool = True
    suite: Union[Literal["autoattack", "fast"], list[AttackConfig]] = "autoattack"
    threats: Optional[list[ThreatConfig]] = Field(
        None, description="default: every (norm, eps) ball of the white-box grid")

    @model_validator(mode="after")
    def _suite(self):
        if isinstance(self.suite, list):
            if not self.suite:
                raise ValueError("eval.worst_case.suite must not be empty")
            fixed = [a.label for a in self.suite if {"norm", "eps"} & a.model_fields_set]
            if fixed:
                raise ValueError(f"eval.worst_case.suite: {fixed} set norm/eps; each threat gives them")
            if any(a.kind == "cw" for a in self.suite):
                raise ValueError("eval.worst_case.suite: CW is unbounded, it has no place in a threat model")
        return self

    def suite_attacks(self, norm: str, eps: float) -> list[AttackConfig]:
        """The suite's attacks in the ``(norm, eps)`` ball (Linf-only kinds skipped for L2)."""
        suite = WORST_CASE_SUITES[self.suite]() if isinstance(self.suite, str) else self.suite
        out = []
        for a in suite:
            if norm != "linf" and a.kind in ("fgsm", "mifgsm", "jitter"):
                continue
            out.append(AttackConfig(**{**a.model_dump(exclude_unset=True), "norm": norm, "eps": eps}))
        return out


class MaskingChecksConfig(Strict):
    """Automatic gradient-masking checks on every evaluation (Carlini et al. 2019): each a named
    flag with its evidence, never an edit of a number (rkd.evaluation.masking_checks). The
    probes run on the first ``max_samples`` evaluated images."""

    enabled: bool = True
    max_samples: Annotated[int, Field(gt=0)] = 100
    large_eps: Annotated[Number, Field(gt=0)] = Field(0.5, description="Linf radius where accuracy must near chance")
    chance_margin: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.1, description="flag when accuracy at large_eps exceeds chance by more than this")
    black_box_queries: Annotated[int, Field(gt=0)] = Field(
        1000, description="Square queries of the gradient-free probe")
    restarts: Annotated[int, Field(ge=2)] = Field(3, description="random restarts of the restart probe")
    step_counts: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [10, 50], description="PGD steps of the step probe (besides the grid's)")
    tolerance: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.03, description="accuracy difference (absolute) read as noise by every comparison")
    zero_gradient_fraction: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.1, description="flag when more than this share of input gradients is zero or vanishing")


class EvalConfig(Strict):
    enabled: bool = True
    attacks: list[AttackConfig] = Field(default_factory=_robust_kd_grid)
    worst_case: WorstCaseConfig = Field(default_factory=WorstCaseConfig)
    checks: MaskingChecksConfig = Field(default_factory=MaskingChecksConfig)
    step_sweep: Optional[StepSweepConfig] = None
    jsma: Optional[JsmaEvalConfig] = None
    input_gradient: bool = Field(
        False, description="mean L1/L2 norm of the input gradient of the CE loss (at T = 1) over the test subset"
    )
    transfer: Optional[TransferEvalConfig] = Field(
        None, description="MACD's transfer protocol, next to the white-box grid"
    )
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
    system_metrics: bool = Field(False, description="log CPU, memory, disk, network (and GPU with pynvml) "
                                                    "as system/* metrics (MLflow's monitor)")
    system_metrics_interval_s: Annotated[float, Field(ge=0.5)] = Field(10.0, description="seconds between samples")


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
    """One run. Fields marked ``NotInKey(RUN)`` say where and how it runs, not what it trains
    (see :mod:`rkd.config.identity`). ``method`` is validated by the config class registered
    for its ``name`` (:mod:`rkd.config.methods`)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")] = "experiment"
    seed: int = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$"), NotInKey(RUN)] = "auto"
    output_dir: Annotated[str, NotInKey(RUN)] = Field(
        "runs", description="run directories; also the default root of the teacher and adversarial caches")
    data: DataConfig = DataConfig()
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: Any = Field(default_factory=default_method)
    train: TrainConfig = TrainConfig()
    eval: Annotated[EvalConfig, NotInKey(RUN)] = EvalConfig()
    tracking: Annotated[TrackingConfig, NotInKey(RUN)] = TrackingConfig()
    scaling: Annotated[ScalingConfig, NotInKey(RUN)] = Field(default_factory=ScalingConfig)

    @field_validator("method", mode="wrap")
    @classmethod
    def _method_by_name(cls, value, handler):
        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"method must be a mapping with a 'name', got {type(value).__name__}")
        name = value.get("name", default_method().name)
        if not isinstance(name, str):
            raise ValueError(f"method.name must be a string, got {name!r}")
        return method_config_class(name).model_validate(value)

    @model_validator(mode="after")
    def _method_fits(self):
        m = self.method
        if m.CLASSIFIER and self.model.arch.startswith("mae_"):
            raise ValueError(f"{self.model.arch} has no classifier; it is trained by a method without one (mae)")
        if self.eval.transfer is not None and self.eval.transfer.source is None and m.transfer_source() is None:
            raise ValueError(f"eval.transfer.source is required (method {m.name} has no source model of its own)")
        m.check(self)
        self._numerics_fit()
        return self

    def _numerics_fit(self) -> None:
        """A method whose step must stay in fp32 refuses AMP, TF32 and torch.compile."""
        reason = self.method.fp32_only()
        if reason is None:
            return
        for key, value in (("train.amp", self.train.amp), ("train.tf32", self.train.tf32),
                           ("train.compile", self.train.compile)):
            if value is not False and value != "auto":
                raise ValueError(f"{key} must be false while {reason}; rkd runs it in fp32 only (README, Numerics)")

    def trained_models(self) -> dict[str, TeacherConfig]:
        """``{key path: spec}`` of every trained model a run of this config loads: the
        method's own (``method.teacher``, ...) and the transfer protocol's source."""
        out = {f"method.{role}": spec for role, spec in self.method.trained_models().items()}
        source = self.transfer_source()
        if source is not None and source not in out.values():
            out["eval.transfer.source"] = source
        return out

    def transfer_source(self) -> TeacherConfig | None:
        if self.eval.transfer is None:
            return None
        return self.eval.transfer.source or self.method.transfer_source()

    def adv_cache_dir(self, cache_dir: str | None) -> str:
        return cache_dir if cache_dir is not None else f"{self.output_dir}/adv_cache"

    def resolved_eval(self) -> EvalConfig:
        """The eval section with its defaults that depend on the run filled in: the transfer
        protocol's source (the method's own by default) and cache folder."""
        t = self.eval.transfer
        if t is None:
            return self.eval
        t = t.model_copy(update={"source": self.transfer_source(), "cache_dir": self.adv_cache_dir(t.cache_dir)})
        return self.eval.model_copy(update={"transfer": t})
