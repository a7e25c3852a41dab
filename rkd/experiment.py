"""One experiment run: config -> data, model, method -> train -> evaluate -> track.

This is the function every entry point calls: ``rkd train``, the quickstart, a Ray Train worker
or a Tune trial (which add their own callbacks). A run lives in a directory::

    <output_dir>/<name>-<timestamp>/
        config.yaml          the fully resolved config
        run.json             MLflow run id, tracking URI, status, device
        history.json         per-epoch metrics
        checkpoints/epoch_NNNN.pt (+ .sha256)   resumable trainer state (newest kept)
        model.pt (+ .sha256) final weights of the trained model (state_dict)
        results.json, results.md   robust-accuracy evaluation (schema in rkd.evaluation.results)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from rkd.config import ExperimentConfig, load_config, save_config
from rkd.data import build_dataset, class_subset, dataset_info, half_split, limit
from rkd.data.transforms import train_transform
from rkd.engine import (
    Callback,
    DistributedEpochSampler,
    GradientAllReduce,
    CheckpointCallback,
    HistoryCallback,
    ProgressCallback,
    Trainer,
    atomic_torch_save,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    seed_everything,
    verified_torch_load,
)
from rkd.evaluation import accuracy, evaluate, make_results, write_results
from rkd.evaluation.robust_accuracy import eval_subset
from rkd.data.loader import make_loader
from rkd.methods import TEACHER_METHODS, build_method
from rkd.models import create_model, set_input_size
from rkd.adversarial_cache import CacheCorruptError, cached_adversarial_set
from rkd.data import paired_dataset
from rkd.teachers import ensure_teacher, load_teacher
from rkd.tracking import MlflowRun, resolve_tracking_uri


@dataclass
class RunOutput:
    run_dir: Path
    results: dict | None
    history: list[dict]
    mlflow_run_id: str | None
    train_wall_time_s: float
    extra: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_datasets(data_cfg):
    """(train set with augmentation, test set, num_classes) as configured."""
    kw = dict(root=data_cfg.root, download=data_cfg.download)
    if data_cfg.dataset in ("cifar10", "cifar100", "svhn"):
        kw["verify"] = data_cfg.verify
    train = build_dataset(data_cfg.dataset, train=True, **kw)
    test = build_dataset(data_cfg.dataset, train=False, **kw)
    if data_cfg.classes is not None:
        train, test = class_subset(train, data_cfg.classes), class_subset(test, data_cfg.classes)
    if data_cfg.half is not None:
        train = half_split(train, data_cfg.half, seed=data_cfg.split_seed)
    if data_cfg.limit_train is not None:
        train = limit(train, data_cfg.limit_train, seed=data_cfg.split_seed)
    if data_cfg.limit_test is not None:
        test = limit(test, data_cfg.limit_test, seed=data_cfg.split_seed)
    if data_cfg.augment:
        train = train.with_transform(train_transform(flip=data_cfg.flip))
    return train, test, train.num_classes


def num_classes_of(data_cfg) -> int:
    """Number of classes the configured data will have (known before loading it)."""
    return len(data_cfg.classes) if data_cfg.classes is not None else dataset_info(data_cfg.dataset).num_classes


def build_model(cfg: ExperimentConfig, num_classes: int | None = None):
    """The configured model (its knobs were checked against the architecture by the schema)."""
    num_classes = num_classes_of(cfg.data) if num_classes is None else num_classes
    model = create_model(cfg.model.arch, num_classes=num_classes, mean=cfg.data.dataset, **cfg.model.kwargs())
    return set_input_size(model, cfg.model.input_size) if cfg.model.input_size is not None else model


def unique_dir(parent: str | Path, stem: str) -> Path:
    """``parent/stem-<timestamp>`` (with ``-2``, ``-3`` ... if taken), created empty."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    Path(parent).mkdir(parents=True, exist_ok=True)
    base = Path(parent) / f"{stem}-{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")


def _resume_checkpoint(trainer: Trainer, run_dir: Path) -> Path:
    """Load the newest checkpoint that verifies; a corrupt one is reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir / "checkpoints")):
        try:
            trainer.resume(ckpt)
            return ckpt
        except CheckpointError as exc:
            warnings.warn(f"skipping unusable checkpoint: {exc}", stacklevel=2)
    raise CheckpointError(f"no usable checkpoint in {run_dir / 'checkpoints'}")


def clean_accuracy_fn(test_set, device, batch_size: int, max_samples: int | None = 1000):
    """Per-epoch validation: clean accuracy on (the first ``max_samples`` of) the test set."""
    loader = make_loader(eval_subset(test_set, max_samples), batch_size)

    def fn(model):
        return {"val_acc": accuracy(model, loader, device)}

    return fn


def _read_run_json(run_dir: Path) -> dict:
    p = run_dir / "run.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_run_json(run_dir: Path, **updates) -> None:
    data = {**_read_run_json(run_dir), **updates}
    (run_dir / "run.json").write_text(json.dumps(data, indent=1))


def run_experiment(cfg: ExperimentConfig, *, run_dir: str | Path | None = None, resume: bool = False,
                   callbacks: Iterable[Callback] = (), parent_run_id: str | None = None,
                   tags: dict | None = None, rank: int = 0, adversarial_set: torch.Tensor | None = None,
                   world_size: int = 1, resume_from: str | Path | None = None,
                   mlflow_run_id: str | None = None, allow_existing: bool = False) -> RunOutput:
    """Train and evaluate one configured run; returns where it is and what it measured.

    ``resume=True`` continues the newest checkpoint in ``run_dir`` (and reopens its MLflow run,
    so a resumed run is still one run). Any exception marks the MLflow run FAILED and re-raises.
    ``adversarial_set`` (MACD): the one-time adversarial examples of the training set, when the
    caller already has them (e.g. from Ray's object store); otherwise the on-disk cache is used.

    Data-parallel use (a Ray Train worker): ``rank`` / ``world_size`` of the process group; each
    rank takes its shard of every epoch (:class:`~rkd.engine.DistributedEpochSampler`) with
    ``ceil(batch_size / world_size)`` images per step, gradients are averaged after each backward,
    and only rank 0 writes files, tracks and evaluates. ``resume_from``: a trainer checkpoint file
    to continue from (Ray's ``get_checkpoint()``); ``mlflow_run_id``: an MLflow run to log into
    (created by the driver, so a restarted worker group continues the same run).
    ``allow_existing``: the run directory may hold files of an earlier attempt of this same run
    (an orchestrator's restart before the first checkpoint); they are overwritten.
    """
    device = resolve_device(cfg.device)
    if run_dir is not None:
        run_dir = Path(run_dir)
        if resume and latest_checkpoint(run_dir / "checkpoints") is None:
            raise FileNotFoundError(f"nothing to resume in {run_dir}: no checkpoints/epoch_*.pt")
        if not (resume or allow_existing or resume_from is not None) and rank == 0 and run_dir.is_dir() \
                and any(run_dir.iterdir()):
            raise FileExistsError(f"run directory {run_dir} is not empty; resume it or choose another")
    elif resume:
        raise ValueError("resume=True needs the run_dir to resume")
    previous = _read_run_json(run_dir) if resume else {}
    if mlflow_run_id is not None:
        previous["mlflow_run_id"] = mlflow_run_id

    m = cfg.method
    teacher = teacher_run = None
    if m.name in TEACHER_METHODS and m.teacher is not None:  # first: training a teacher must not shift the student's RNG
        teacher, teacher_run = load_teacher(m.teacher, device, parent_run_id=parent_run_id, tracking=cfg.tracking)
        t_teacher = getattr(teacher_run.cfg.method, "temperature", 1.0)
        if m.name == "defensive_distillation" and t_teacher != m.temperature:
            warnings.warn(f"defensive distillation at T={m.temperature:g} from a teacher trained at "
                          f"T={t_teacher:g}; Papernot et al. use the same T for both", stacklevel=2)
    source, source_run = _load_source(cfg, device, parent_run_id)
    start_state = None
    if m.name == "mae" and m.start_from is not None:  # stage 2 starts from stage 1's weights
        start_run = ensure_teacher(m.start_from, parent_run_id=parent_run_id, tracking=cfg.tracking)
        start_state = start_run.state if start_run.state is not None else verified_torch_load(start_run.run_dir / "model.pt")
    seed_everything(cfg.seed)
    model = build_model(cfg)  # before the data: a bad model setting fails in a second
    if start_state is not None:
        _load_mae_start(model, start_state)
    train_set, test_set, num_classes = build_datasets(cfg.data)
    if num_classes != num_classes_of(cfg.data):
        raise ValueError(f"{cfg.data.dataset}: {num_classes} classes in the data, expected {num_classes_of(cfg.data)}")
    if m.name == "macd" and m.adversarial:
        train_set = macd_training_set(cfg, train_set, source, device, adversarial_set)
    method = build_method(m, model, teacher, source=source, seed=cfg.seed)
    if run_dir is None:  # only once everything could be built
        run_dir = unique_dir(cfg.output_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")

    run_tags = {"rkd.method": cfg.method.name, "rkd.dataset": cfg.data.dataset, "rkd.arch": cfg.model.arch,
                "rkd.run_dir": str(run_dir.resolve()), **(tags or {})}
    teacher_info = None
    if teacher_run is not None:
        teacher_info = {"run_dir": str(teacher_run.run_dir), "name": teacher_run.cfg.name, "key": teacher_run.key}
        run_tags["rkd.teacher_run_dir"] = str(teacher_run.run_dir.resolve())
    source_info = None
    if source_run is not None:
        source_info = {"run_dir": str(source_run.run_dir), "name": source_run.cfg.name, "key": source_run.key}
        run_tags["rkd.source_run_dir"] = str(source_run.run_dir.resolve())
    tracker = MlflowRun(cfg.tracking, run_name=cfg.name, tags=run_tags, parent_run_id=parent_run_id,
                        run_id=previous.get("mlflow_run_id"), rank=rank)
    with tracker:
        if rank == 0:
            _write_run_json(run_dir, name=cfg.name, mlflow_run_id=tracker.run_id, status="RUNNING",
                            tracking_uri=resolve_tracking_uri(cfg.tracking.tracking_uri) if tracker.enabled else None,
                            device=str(device), teacher=teacher_info, source=source_info)
        try:
            if not resume and resume_from is None:
                tracker.log_config(cfg)
            sampler, extra = None, []
            if world_size > 1:
                sampler = DistributedEpochSampler(len(train_set), rank, world_size, seed=cfg.seed)
                extra = [GradientAllReduce()]
            trainer = Trainer(
                method, train_set, cfg.train, batch_size=math.ceil(cfg.data.batch_size / world_size), device=device,
                seed=cfg.seed, num_workers=cfg.data.num_workers, rank=rank, sampler=sampler,
                eval_fn=(mae_loss_fn(test_set, device, cfg.data.eval_batch_size, m.mask_ratio, m.stage) if m.name == "mae"
                         else clean_accuracy_fn(test_set, device, cfg.data.eval_batch_size)),
                callbacks=[ProgressCallback(cfg.train.progress, desc=cfg.name), HistoryCallback(run_dir / "history.json"),
                           CheckpointCallback(run_dir / "checkpoints", cfg.train.checkpoint_every,
                                              cfg.train.keep_checkpoints),
                           tracker.callback(), *extra, *callbacks],
            )
            if resume_from is not None:
                trainer.resume(resume_from)
            elif resume:
                _resume_checkpoint(trainer, run_dir)
            trainer.fit()
            results = None
            if rank == 0:
                atomic_torch_save(model.state_dict(), run_dir / "model.pt")
                if cfg.eval.enabled:
                    body = evaluate(model, test_set, cfg.eval, device=device, batch_size=cfg.data.eval_batch_size,
                                    source=source, source_label=source_info and source_info["name"])
                    results = make_results(body, run=_run_info(cfg, run_dir, tracker.run_id, teacher_info, source_info),
                                           train_wall_time_s=trainer.wall_time)
                    tracker.log_results(results, list(write_results(results, run_dir)))
                else:
                    tracker.log_metrics({"train_wall_time_s": trainer.wall_time})
                tracker.log_model(model)
                model.to(device)
        except BaseException as exc:
            if rank == 0:
                _write_run_json(run_dir, status="FAILED", error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        if rank == 0:
            _write_run_json(run_dir, status="FINISHED", train_wall_time_s=trainer.wall_time)
    return RunOutput(run_dir, results, trainer.history, tracker.run_id, trainer.wall_time)


def _run_info(cfg: ExperimentConfig, run_dir: Path, mlflow_run_id: str | None, teacher: dict | None = None,
              source: dict | None = None) -> dict:
    info = {"name": cfg.name, "method": cfg.method.name, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
            "run_dir": str(run_dir), "mlflow_run_id": mlflow_run_id}
    if teacher is not None:
        info["teacher"] = teacher
    if source is not None:
        info["source"] = source
    return info


def _source_spec(cfg: ExperimentConfig):
    """The standard model a run attacks: MACD's ``method.source``, or ``eval.transfer.source``."""
    if cfg.eval.transfer is not None and cfg.eval.transfer.source is not None:
        if cfg.method.name == "macd" and cfg.eval.transfer.source != cfg.method.source:
            raise ValueError("eval.transfer.source differs from method.source; MACD is evaluated against the "
                             "model its adversarial examples came from")
        return cfg.eval.transfer.source
    if cfg.method.name == "macd":
        return cfg.method.source
    return None


def _load_source(cfg: ExperimentConfig, device, parent_run_id: str | None):
    spec = _source_spec(cfg)
    if spec is None:
        return None, None
    return load_teacher(spec, device, parent_run_id=parent_run_id, tracking=cfg.tracking)


def macd_adversarial_set(cfg: ExperimentConfig, train_set, source, device, return_key: bool = False):
    """MACD's one-time adversarial examples of ``train_set`` (``method.attack`` against
    ``source``), from the on-disk cache under ``method.cache_dir``, built there on first use.
    Returns the ``(N, C, H, W)`` tensor (and the cache key with ``return_key``)."""
    m = cfg.method
    clean = train_set.with_transform(None)
    adv, labels, key = cached_adversarial_set(m.cache_dir, source, clean, m.attack.attack_params(), cfg.seed,
                                              batch_size=cfg.data.eval_batch_size, device=device, return_key=True)
    if not torch.equal(labels, clean.labels):
        raise CacheCorruptError(key, "the cached adversarial set's labels differ from the training set's")
    return (adv, key) if return_key else adv


def macd_training_set(cfg: ExperimentConfig, train_set, source, device, adversarial_set: torch.Tensor | None = None):
    """MACD's training data: each clean image paired with its one-time adversarial example
    (``adversarial_set`` when given, else :func:`macd_adversarial_set`), augmented together
    (:func:`rkd.data.paired_dataset`)."""
    if adversarial_set is None:
        adversarial_set = macd_adversarial_set(cfg, train_set, source, device)
    return paired_dataset(train_set.with_transform(None), adversarial_set).with_transform(train_set.transform)


def _load_mae_start(model, state: dict) -> None:
    """Stage-1 weights into the stage-2 teacher: everything but the feature module must match
    (stage 1 may have used another fusion; its feature module was never trained anyway)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("feature_module.")] + [
        k for k in unexpected if not k.startswith("feature_module.")]
    if bad:
        raise ValueError(f"method.start_from: its weights do not fit this MAE ({bad[:4]}); use the same MAE sizes")


def mae_loss_fn(test_set, device, batch_size: int, mask_ratio: float, stage: str, max_samples: int | None = 1000):
    """Per-epoch validation of an MAE: its training loss (of ``stage``) on (the first
    ``max_samples`` of) the test set, with masks from a fixed seed so epochs are comparable."""
    loader = make_loader(eval_subset(test_set, max_samples), batch_size)

    def fn(model):
        was = model.training
        model.eval()
        gen = torch.Generator(device=device).manual_seed(0)
        total, n = 0.0, 0
        with torch.no_grad():
            for x, _ in loader:
                x = x.to(device)
                loss = model.mae(x, mask_ratio, gen)[0] if stage == "reconstruction" else model.mae_loss(x, mask_ratio, gen)[0]
                total += loss.item() * x.shape[0]
                n += x.shape[0]
        model.train(was)
        return {"val_mae_loss": total / max(n, 1)}

    return fn


def load_trained_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(config, model with the run's final weights, test set) of a finished run directory."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    _, test_set, num_classes = build_datasets(cfg.data)
    model = build_model(cfg, num_classes)
    model.load_state_dict(verified_torch_load(run_dir / "model.pt"))
    return cfg, model.to(device).eval(), test_set


def evaluate_run(run_dir: str | Path, *, eval_overrides: Iterable[str] = (), eval_config: str | None = None,
                 track: bool = True) -> dict:
    """Evaluate a finished run again (e.g. with another grid); results go to its directory and
    into its MLflow run (reopened)."""
    run_dir = Path(run_dir)
    base = load_config(str(run_dir / "config.yaml"))
    overrides = list(eval_overrides)
    if eval_config is not None:
        other = load_config(eval_config)
        overrides = [f"eval={json.dumps(other.eval.model_dump(mode='json'))}"] + overrides
    cfg = load_config(str(run_dir / "config.yaml"), overrides) if overrides else base
    device = resolve_device(cfg.device)
    _, model, test_set = load_trained_model(run_dir, device)
    source, source_run = _load_source(cfg, device, None)
    previous = _read_run_json(run_dir)
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    with MlflowRun(tracking, run_name=cfg.name, run_id=previous.get("mlflow_run_id")) as tracker:
        body = evaluate(model, test_set, cfg.eval, device=device, batch_size=cfg.data.eval_batch_size, source=source,
                        source_label=source_run.cfg.name if source_run is not None else None)
        results = make_results(body, run=_run_info(cfg, run_dir, tracker.run_id, previous.get("teacher"),
                                                   previous.get("source")),
                               train_wall_time_s=previous.get("train_wall_time_s"))
        files = write_results(results, run_dir)
        tracker.log_results(results, list(files))
    return results
