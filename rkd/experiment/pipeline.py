"""One experiment run: config -> prepare -> train -> evaluate -> track.

:func:`run_experiment` is what every entry point calls: ``rkd train``, the quickstart, a Ray
Train worker, a Tune trial and the teacher cache (which add their own callbacks and
:class:`~rkd.experiment.place.RunPlace`). Nothing here knows a method by name: what a method
needs (trained models, shared training data, its per-epoch validation) comes from its
registered :class:`~rkd.methods.registry.MethodSpec`. A run lives in a directory::

    <output_dir>/<name>-<timestamp>/
        config.yaml          the fully resolved config
        run.json             MLflow run id, tracking URI, status, device, the models it loaded
        history.json         per-epoch metrics (``val_*`` on the validation split of
                             data.val_size; ``test_*`` on the first 1000 test images without one)
        checkpoints/epoch_NNNN.pt (+ .sha256)   resumable trainer state (newest kept)
        model.pt (+ .sha256) final weights of the trained model (state_dict)
        results.json, results.md   robust-accuracy evaluation (schema in rkd.evaluation.results,
                             plus ``splits``: the images of each split, see Prepared.split_record)
"""

from __future__ import annotations

import math
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from rkd.config import ExperimentConfig, save_config
from rkd.config.schema import TeacherConfig, TrackingConfig
from rkd.data.loader import make_loader
from rkd.engine import (
    Callback,
    CheckpointCallback,
    CheckpointError,
    DistributedEpochSampler,
    GradientAllReduce,
    HistoryCallback,
    ProgressCallback,
    Trainer,
    atomic_torch_save,
    latest_checkpoint,
    list_checkpoints,
    seed_everything,
    verified_torch_load,
)
from rkd.engine.device import resolve_device
from rkd.evaluation import accuracy, evaluate, make_results, write_result_files
from rkd.evaluation.robust_accuracy import eval_subset
from rkd.experiment.builders import build_data, build_model, num_classes_of
from rkd.experiment.chain_data import require_chain_data
from rkd.experiment.model_cache import DEFAULT_OUTPUT_DIR, TeacherRun, ensure_cached
from rkd.experiment.place import RunPlace
from rkd.experiment.run_claim import CLAIM_FILE, claimed
from rkd.experiment.run_dir import read_run_json, require_writable, unique_dir, write_run_json
from rkd.interrupt import STOPPED
from rkd.methods import build_method, get_method
from rkd.tracking import MlflowRun, check_tracking, resolve_tracking_uri
from rkd.tracking.source_tags import model_role, run_label


@dataclass
class RunOutput:
    run_dir: Path
    results: dict | None
    history: list[dict]
    mlflow_run_id: str | None
    train_wall_time_s: float
    extra: dict = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A trained model a run needs, frozen on the run's device, and the run it came from."""

    module: nn.Module
    run: TeacherRun

    def info(self) -> dict:
        return {"run_dir": str(self.run.run_dir), "name": self.run.cfg.name, "key": self.run.key}


@dataclass
class Prepared:
    """Everything built before training starts (so a bad setting fails before any work)."""

    cfg: ExperimentConfig
    place: RunPlace
    device: torch.device
    models: dict[str, LoadedModel]   # by key path (method.teacher, eval.transfer.source, ...)
    model: nn.Module
    method: Any
    train_set: Any
    test_set: Any
    run_dir: Path
    val_set: Any = None   # the validation split of data.val_size (None without one)

    def split_record(self) -> dict:
        """The ``splits`` entry of results.json and run.json: images trained on, held out for
        validation (``validation_source`` ``"train"``: carved from the training set; None
        without a split), test images the final evaluation uses (0 with ``eval.enabled``
        false) and the seed of the splits."""
        n_test = min(len(self.test_set), self.cfg.eval.max_samples or len(self.test_set))
        return {"train": len(self.train_set), "validation": 0 if self.val_set is None else len(self.val_set),
                "test": n_test if self.cfg.eval.enabled else 0,
                "validation_source": None if self.val_set is None else "train",
                "split_seed": self.cfg.data.split_seed}

    def transfer_source(self) -> LoadedModel | None:
        spec = self.cfg.transfer_source()
        if spec is None:
            return None
        specs = self.cfg.trained_models()
        return next((m for k, m in self.models.items() if specs[k] == spec), None)

    def roles(self) -> dict[str, dict]:
        """The loaded models' records by role (``teacher``, ``source``, ...) for run.json and results."""
        out = {}
        for key, m in self.models.items():
            out[key.removeprefix("method.") if key.startswith("method.") else "source"] = m.info()
        return out


# ------------------------------------------------------------------------------ trained models
def ensure_teacher(spec: TeacherConfig, *, parent_run_id: str | None = None, tracking: TrackingConfig | None = None,
                   output_dir: str = DEFAULT_OUTPUT_DIR, tags: dict | None = None,
                   requested_as: str | None = None) -> TeacherRun:
    """Make sure a trained model exists as a finished run (trained once, cached; see
    :mod:`rkd.experiment.model_cache`), training it through this pipeline if needed; ``tags``
    go to its run when it trains (e.g. the node it ran on); ``requested_as``: the role the
    requesting run gives it (``teacher``, ``source``), for its ``rkd.role``."""
    def train(cfg, run_dir, resume, key):
        role = model_role(requested_as, cfg.model.arch)
        run_experiment(cfg, RunPlace(run_dir=run_dir, resume=resume, parent_run_id=parent_run_id,
                                     tags={"rkd.role": role, "rkd.label": f"{cfg.name} ({role}, cached)",
                                           "rkd.teacher_key": key, **(tags or {})}))

    return ensure_cached(spec, train, output_dir=output_dir, tracking=tracking)


def load_teacher(spec: TeacherConfig, device="cpu", *, parent_run_id: str | None = None,
                 tracking: TrackingConfig | None = None, output_dir: str = DEFAULT_OUTPUT_DIR,
                 requested_as: str | None = None) -> tuple[nn.Module, TeacherRun]:
    """The network of a trained model (eval mode, on ``device``) and where it came from."""
    run = ensure_teacher(spec, parent_run_id=parent_run_id, tracking=tracking, output_dir=output_dir,
                         requested_as=requested_as)
    model = build_model(run.cfg)
    model.load_state_dict(run.state if run.state is not None else verified_torch_load(run.run_dir / "model.pt"))
    return model.to(device).eval(), run


def ensure_named_models(cfg: ExperimentConfig, *, parent_run_id: str | None = None,
                        tracking: TrackingConfig | None = None) -> None:
    """Train (once) every model a run of ``cfg`` loads that is not cached yet -- e.g. in a
    driver, before workers or trials that only load them start."""
    for spec in cfg.trained_models().values():
        ensure_teacher(spec, parent_run_id=parent_run_id, tracking=tracking or cfg.tracking, output_dir=cfg.output_dir)


def requested_role(key: str) -> str:
    """``method.teacher`` -> ``teacher``, ``method.teacher.1`` -> ``teacher``,
    ``eval.transfer.source`` -> ``source``: what a run calls a model it loads."""
    parts = [p for p in key.split(".") if not p.isdigit()]
    return parts[-1]


def by_role(models: dict[str, LoadedModel]) -> dict[str, nn.Module]:
    """The method's own loaded networks (``method.<role>`` keys) by role, as its builder takes them."""
    return {k.removeprefix("method."): m.module for k, m in models.items() if k.startswith("method.")}


def load_trained_models(cfg: ExperimentConfig, device, parent_run_id: str | None) -> dict[str, LoadedModel]:
    """Every model of ``cfg.trained_models()``, in its order (trained first where missing)."""
    out = {}
    for key, spec in cfg.trained_models().items():
        module, run = load_teacher(spec, device, parent_run_id=parent_run_id, tracking=cfg.tracking,
                                   output_dir=cfg.output_dir, requested_as=requested_role(key))
        out[key] = LoadedModel(module, run)
    return out


# ------------------------------------------------------------------------------------ prepare
def check_run_dir(place: RunPlace) -> None:
    """A new run needs an empty (or no) directory; a resumed one a checkpoint in it."""
    d = place.run_dir
    if d is None:
        return
    if place.resume is True:  # a corrupt record is refused here, not after the teachers have loaded
        if read_run_json(d).get("status") == "FINISHED":
            raise FileExistsError(f"run {d} has finished: nothing to resume (rkd eval {d} evaluates it again)")
        if latest_checkpoint(d / "checkpoints") is None:
            raise FileNotFoundError(f"nothing to resume in {d}: no checkpoints/epoch_*.pt")
    if (place.resume is False and not place.attempt and place.writer and d.is_dir()
            and any(f.name != CLAIM_FILE for f in d.iterdir())):
        raise FileExistsError(f"run directory {d} is not empty; resume it or choose another")


def run_dir_claim(place: RunPlace):
    """The writer's exclusive claim on its given run directory (rkd.experiment.run_claim), taken
    before any work; a nothing-to-do context for other ranks, fresh directories and a resume
    whose directory is missing (check_run_dir refuses that)."""
    d = place.run_dir
    if d is None or not place.writer or (place.resume is not False and not d.is_dir()):
        return nullcontext()
    d.mkdir(parents=True, exist_ok=True)
    return claimed(d)


def prepare(cfg: ExperimentConfig, place: RunPlace, shared_data: torch.Tensor | None = None) -> Prepared:
    """Load the trained models, then (seeded) build the model, the data and the method."""
    device = resolve_device(cfg.device)
    check_run_dir(place)
    check_tracking(cfg.tracking if place.writer else cfg.tracking.model_copy(update={"enabled": False}))
    if place.writer:  # the folders it writes: runs and caches, its own directory's
        for folder in {Path(cfg.output_dir), *([place.run_dir.parent] if place.run_dir is not None else [])}:
            require_writable(folder)
    require_chain_data(cfg, cfg.output_dir)  # every stage's dataset, before the first one trains
    models = load_trained_models(cfg, device, place.parent_run_id)  # first: training one must not shift our RNG
    seed_everything(cfg.seed)
    model = build_model(cfg)  # before the data: a bad model setting fails in a second
    data = build_data(cfg.data)
    if data.num_classes != num_classes_of(cfg.data):
        raise ValueError(f"{cfg.data.dataset}: {data.num_classes} classes in the data, "
                         f"expected {num_classes_of(cfg.data)}")
    train_set, test_set = data.train, data.test
    roles = by_role(models)
    train_set = training_set(cfg, train_set, roles, device, shared_data)
    method = build_method(cfg.method, model, models=roles, seed=cfg.seed)
    run_dir = place.run_dir if place.run_dir is not None else unique_dir(cfg.output_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if place.writer:
        save_config(cfg, run_dir / "config.yaml")
    return Prepared(cfg, place, device, models, model, method, train_set, test_set, run_dir, data.validation)


def training_set(cfg: ExperimentConfig, train_set, models: dict[str, nn.Module], device, shared=None):
    """The data the method trains on: the dataset itself, or with the method's shared data
    (given, e.g. from Ray's object store, or built/read from its cache)."""
    spec = get_method(cfg.method.name).shared_data
    if spec is None or spec.identity(cfg) is None:
        return train_set
    if shared is None:
        shared = spec.build(cfg, train_set, models, device)
    return spec.use(cfg, train_set, shared)


#: test images of the per-epoch metrics of a run without a validation split
EPOCH_EVAL_TEST_SAMPLES = 1000


def epoch_eval_data(test_set, val_set=None):
    """``(data, split)`` of the per-epoch metrics: the whole validation split (``"val"``) when
    the run has one, else the first :data:`EPOCH_EVAL_TEST_SAMPLES` test images (``"test"``);
    never augmented."""
    if val_set is not None:
        return eval_subset(val_set, None), "val"
    return eval_subset(test_set, EPOCH_EVAL_TEST_SAMPLES), "test"


def _as_test_metrics(metrics: dict) -> dict:
    return {f"test_{k[4:]}" if k.startswith("val_") else k: v for k, v in metrics.items()}


def epoch_eval_fn(cfg: ExperimentConfig, test_set, device, val_set=None):
    """The per-epoch metrics: the method's ``epoch_eval`` hook (default: clean accuracy,
    ``val_acc``) on :func:`epoch_eval_data`. A hook gets the data to evaluate and names its
    metrics ``val_*``; without a validation split they are measured on test images, and
    renamed ``test_*`` (``test_acc``) so that nobody reads them as a validation figure."""
    data, split = epoch_eval_data(test_set, val_set)
    custom = get_method(cfg.method.name).epoch_eval
    if custom is not None:
        fn = custom(cfg, data, device)
    else:
        loader = make_loader(data, cfg.data.eval_batch_size)

        def fn(model):
            return {"val_acc": accuracy(model, loader, device)}

    if split == "val":
        return fn
    return lambda model: _as_test_metrics(fn(model))


# -------------------------------------------------------------------------------------- train
def make_trainer(p: Prepared, tracker: MlflowRun, callbacks: Iterable[Callback]) -> Trainer:
    cfg, place = p.cfg, p.place
    sampler, extra = None, []
    if place.world_size > 1:
        sampler = DistributedEpochSampler(len(p.train_set), place.rank, place.world_size, seed=cfg.seed)
        extra = [GradientAllReduce()]
    return Trainer(
        p.method, p.train_set, cfg.train, batch_size=math.ceil(cfg.data.batch_size / place.world_size),
        device=p.device, seed=cfg.seed, num_workers=cfg.data.num_workers, rank=place.rank, sampler=sampler,
        fp32_only=cfg.method.fp32_only() is not None, data_on_device=cfg.data.on_device,
        eval_fn=epoch_eval_fn(cfg, p.test_set, p.device, p.val_set),
        callbacks=[ProgressCallback(cfg.train.progress, desc=cfg.name), HistoryCallback(p.run_dir / "history.json"),
                   CheckpointCallback(p.run_dir / "checkpoints", cfg.train.checkpoint_every,
                                      cfg.train.keep_checkpoints),
                   tracker.callback(), *extra, *callbacks],
    )


def resume_trainer(trainer: Trainer, place: RunPlace, run_dir: Path) -> None:
    """Continue from the orchestrator's checkpoint, or the newest one in ``run_dir`` that
    verifies (a corrupt one is reported and skipped)."""
    if place.checkpoint is not None:
        trainer.resume(place.checkpoint)
        return
    if place.resume is not True:
        return
    for ckpt in reversed(list_checkpoints(run_dir / "checkpoints")):
        try:
            trainer.resume(ckpt)
            return
        except CheckpointError as exc:
            warnings.warn(f"skipping unusable checkpoint: {exc}", stacklevel=2)
    raise CheckpointError(f"no usable checkpoint in {run_dir / 'checkpoints'}")


# ----------------------------------------------------------------------------------- evaluate
def run_info(cfg: ExperimentConfig, run_dir: Path, mlflow_run_id: str | None, roles: dict) -> dict:
    return {"name": cfg.name, "method": cfg.method.name, "seed": cfg.seed, "arch": cfg.model.arch,
            "dataset": cfg.data.dataset, "run_dir": str(run_dir), "mlflow_run_id": mlflow_run_id, **roles}


def eval_log(name: str):
    """Where the evaluation's progress lines go: stderr, prefixed like the epoch lines."""
    return lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True)


def evaluate_and_save(p: Prepared, tracker: MlflowRun, trainer: Trainer) -> dict | None:
    """Rank 0: the final weights, the evaluation (when enabled) and the logged model."""
    cfg, model = p.cfg, p.model
    atomic_torch_save(model.state_dict(), p.run_dir / "model.pt")
    results = None
    if cfg.eval.enabled:
        source = p.transfer_source()
        body = evaluate(model, p.test_set, cfg.resolved_eval(), device=p.device,
                        batch_size=cfg.data.eval_batch_size, source=source and source.module,
                        source_label=source and source.run.cfg.name, log=eval_log(cfg.name))
        body = {**body, "splits": {**p.split_record(), "test": body["num_samples"]}}
        run = {**run_info(cfg, p.run_dir, tracker.run_id, p.roles()), "numerics": trainer.settings}
        results = make_results(body, run=run,
                               train_wall_time_s=trainer.wall_time)
        tracker.log_results(results, write_result_files(results, p.run_dir))
    else:
        tracker.log_metrics({"time/train_s": trainer.wall_time})
    tracker.log_model(model, example_batch(p.test_set))
    model.to(p.device)
    return results


# -------------------------------------------------------------------------------------- track
def example_batch(data, n: int = 2) -> torch.Tensor | None:
    """The first ``n`` images of ``data`` as a CPU batch: the logged model's input example (at
    least 2 images, so that its batch dimension stays dynamic); None with fewer."""
    if data is None or len(data) < max(n, 2):
        return None
    return torch.stack([data[i][0] for i in range(n)]).cpu()


def dataset_inputs(p: Prepared) -> list[dict]:
    """The run's splits as MLflow dataset inputs: name, content digest (the first 16 hex digits
    of the data's SHA-256), context, source and size."""
    d = p.cfg.data
    out = []
    for context, data in (("training", p.train_set), ("validation", p.val_set), ("test", p.test_set)):
        if data is None or not hasattr(data, "fingerprint"):
            continue
        parts = [f"{d.half} half" if d.half else "", d.shift if d.shift != "none" else ""]
        name = d.dataset + (f" ({', '.join(p for p in parts if p)})" if any(parts) else "") + f" {context}"
        out.append({"name": name, "digest": data.fingerprint()[:16], "context": context,
                    "source": str(Path(d.root).resolve()) if d.root else d.dataset,
                    "profile": {"num_images": len(data), "image_shape": list(data.image_shape),
                                "num_classes": data.num_classes}})
    return out


def split_tags(splits: dict) -> dict:
    """A ``splits`` record as MLflow tags (``rkd.split.train``, ``rkd.split.validation``, ...;
    a missing validation source as ``none``)."""
    return {f"rkd.split.{k}": "none" if v is None else v for k, v in splits.items()}


def open_tracker(p: Prepared) -> MlflowRun:
    cfg, place = p.cfg, p.place
    previous = read_run_json(p.run_dir) if place.resume is True else {}
    tags = {"rkd.role": "method", "rkd.label": run_label(cfg), "rkd.method": cfg.method.name,
            "rkd.dataset": cfg.data.dataset, "rkd.arch": cfg.model.arch, "rkd.run_dir": str(p.run_dir.resolve()),
            **place.tags}
    for role, info in p.roles().items():
        tags[f"rkd.{role}_run_dir"] = str(Path(info["run_dir"]).resolve())
        run_id = read_run_json(Path(info["run_dir"])).get("mlflow_run_id")
        if run_id:
            tags[f"rkd.{role}_run_id"] = run_id
    return MlflowRun(cfg.tracking, run_name=cfg.name, tags=tags, parent_run_id=place.parent_run_id,
                     run_id=place.mlflow_run_id or previous.get("mlflow_run_id"), rank=place.rank)


def record_start(p: Prepared, tracker: MlflowRun) -> None:
    uri = resolve_tracking_uri(p.cfg.tracking.tracking_uri) if tracker.enabled else None
    write_run_json(p.run_dir, name=p.cfg.name, mlflow_run_id=tracker.run_id, status="RUNNING", tracking_uri=uri,
                   device=str(p.device), splits=p.split_record(), tags=p.place.tags, **p.roles())


# ---------------------------------------------------------------------------------------- run
def run_experiment(cfg: ExperimentConfig, place: RunPlace | None = None, *, callbacks: Iterable[Callback] = (),
                   adversarial_set: torch.Tensor | None = None, **where) -> RunOutput:
    """Train and evaluate one configured run; returns where it is and what it measured.

    ``place`` (or its fields as keywords: ``run_dir=``, ``resume=``, ``tags=``, ...) says who
    and where the run is (:class:`RunPlace`). ``adversarial_set``: the method's shared training
    data when the caller already has it (e.g. from Ray's object store). Any exception marks the
    run FAILED (run.json and MLflow) and re-raises."""
    if place is not None and where:
        raise TypeError("give a RunPlace or its fields, not both")
    place = place or RunPlace(**where)
    with run_dir_claim(place):
        return _run_claimed(cfg, place, callbacks, adversarial_set)


def gap_record(tracker: MlflowRun) -> dict:
    """run.json's ``tracking_gap`` (when, which request, the error, the backlog file) if the
    tracking store failed during the run; nothing otherwise."""
    return {"tracking_gap": tracker.gap} if tracker.gap else {}


def _run_claimed(cfg: ExperimentConfig, place: RunPlace, callbacks, adversarial_set) -> RunOutput:
    p = prepare(cfg, place, adversarial_set)
    tracker = open_tracker(p)
    with tracker:
        if place.writer:
            record_start(p, tracker)
            tracker.set_tags(split_tags(p.split_record()))
        try:
            if place.writer and place.resume is False:
                tracker.log_config(cfg)
                tracker.log_datasets(dataset_inputs(p))
            trainer = make_trainer(p, tracker, callbacks)
            resume_trainer(trainer, place, p.run_dir)
            trainer.fit()
            results = evaluate_and_save(p, tracker, trainer) if place.writer else None
        except BaseException as exc:
            if place.writer:  # as MlflowRun ends it: stopped from outside (Ctrl-C, SIGTERM) is KILLED
                write_run_json(p.run_dir, status="KILLED" if isinstance(exc, STOPPED) else "FAILED",
                               error=f"{type(exc).__name__}: {exc}"[:2000], **gap_record(tracker))
            raise
        if place.writer:
            write_run_json(p.run_dir, status="FINISHED", train_wall_time_s=trainer.wall_time, **gap_record(tracker))
    return RunOutput(p.run_dir, results, trainer.history, tracker.run_id, trainer.wall_time)
