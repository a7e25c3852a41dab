"""Ray Train: one experiment run as a TorchTrainer (Train V2 API).

The training function every worker runs is :func:`train_func`; it calls the same
:func:`rkd.experiment.run_experiment` as ``rkd train`` does in-process, with

* its rank and world size (data-parallel: a shard of every epoch per rank, gradients averaged
  over the process group, which TorchTrainer creates -- NCCL on GPUs, gloo on CPU);
* a :class:`RayReportCallback`: every epoch all ranks call ``ray.train.report`` (a barrier) and
  rank 0 attaches the trainer state as a checkpoint, which Ray persists to ``storage_path``;
* on a restart (``FailureConfig(max_failures)``) the state from ``ray.train.get_checkpoint()``,
  so the run continues at the epoch after the last checkpoint;
* the MLflow run the driver created, so a restarted worker group logs into the same run.

:func:`fit` is the driver side: it prepares what workers must share (teachers trained once,
on the cluster's workers by :mod:`rkd.orchestration.stages`; absolute paths, the tracking URI),
creates the MLflow run and runs the TorchTrainer. With
``scaling.num_workers: 0`` it runs :func:`run_experiment` in-process without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rkd.config import ExperimentConfig, config_from_dict
from rkd.config.methods import import_plugin, plugin_sources
from rkd.engine import Callback
from rkd.evaluation.metric_names import PERCENT, TRANSFER_SUFFIX, accuracy_metrics, epoch_metrics
from rkd.experiment import RunOutput, RunPlace, run_experiment, unique_dir
from rkd.orchestration.worker_groups import worker_group_ids
from rkd.tracking import absolute_tracking_uri, create_run, end_run

CHECKPOINT_FILE = "trainer.pt"
FINAL_FILE = "final.json"
#: the result keys every report carries (besides the epoch metrics). Not Tune's reserved "done":
#: a result with done=True makes Tune end the trial at once, which for a trial running a
#: TorchTrainer kills the Train controller before it has released its workers.
DONE_KEY, EPOCH_KEY = "finished", "epoch"


def final_report(cfg: ExperimentConfig, results: dict | None, objective: float | None = None) -> dict:
    """A run's last report: finished, its planned epochs, every final accuracy (``acc.*``, on
    the test set) and, given, ``objective``: the objective on the validation split measured
    with the final weights (:attr:`RayReportCallback.final_objective`) -- never a test figure."""
    final = {DONE_KEY: 1, EPOCH_KEY: cfg.train.epochs, **accuracy_metrics(results)}
    if objective is not None:
        final["objective"] = float(objective)
    return final


class RayReportCallback(Callback):
    """Report every epoch to Ray Train; rank 0 attaches the trainer state as the checkpoint.

    ``objective``: optional ``fn(model) -> float`` (:func:`objective_fn`, on the validation
    split) evaluated on rank 0 each epoch -- only after the last one when ``fn.final_only`` (a
    transfer metric) -- and reported as ``objective`` (what a Tune scheduler reads; NaN where
    not measured). The value with the final weights is kept as :attr:`final_objective` for the
    final report. ``report``: the reporting function, ``ray.train.report`` in a Train worker,
    ``ray.tune.report`` in an in-process trial."""

    def __init__(self, objective: Callable | None = None, report: Callable | None = None,
                 checkpoint_cls: type | None = None, extra: dict | None = None):
        self.objective = objective
        self.report = report or ray.train.report
        self.checkpoint_cls = checkpoint_cls or Checkpoint
        self.extra = extra or {}
        self.final_objective: float | None = None

    def on_epoch_end(self, trainer, epoch, metrics):
        report = epoch_metrics(metrics)  # the names and unit (accuracies in %) MLflow shows
        report[EPOCH_KEY] = epoch + 1
        report[DONE_KEY] = 0
        if trainer.rank != 0:
            self.report(report)
            return
        report.update(self.extra)
        last = epoch + 1 >= trainer.epochs
        value = float("nan")  # Tune expects the key
        if self.objective is not None and (last or not getattr(self.objective, "final_only", False)):
            value = float(self.objective(trainer.method.model))
            if last:
                self.final_objective = value
        report["objective"] = value
        with tempfile.TemporaryDirectory() as d:
            trainer.save_checkpoint(Path(d) / CHECKPOINT_FILE)
            self.report(report, checkpoint=self.checkpoint_cls.from_directory(d))

    def on_fit_end(self, trainer):
        # resumed from a checkpoint of the last epoch: no epoch ran, measure the final weights here
        if trainer.rank == 0 and self.objective is not None and self.final_objective is None:
            self.final_objective = float(self.objective(trainer.method.model))


def train_func(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker (see the module docstring). ``config`` keys: ``cfg`` (the
    resolved experiment config as a dict), ``run_dir``, ``cwd``, ``mlflow_run_id``,
    ``parent_run_id``, ``tags``, ``adversarial_set`` (an ObjectRef of a numpy array, or None),
    ``objective`` (the space's metric label, measured on the run's validation split, or
    None), ``plugins`` (method modules from
    outside rkd, :func:`rkd.config.methods.plugin_sources`), ``callbacks`` (more trainer
    callbacks, e.g. a test's fault injection)."""
    if config.get("cwd") and Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])  # relative paths of the config mean what they meant to the driver
    for source in config.get("plugins") or ():
        import_plugin(source)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["cfg"])
    device = ray.train.torch.get_device()
    cfg = cfg.model_copy(update={"device": "cuda" if device.type == "cuda" else "cpu"})
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    checkpoint = ray.train.get_checkpoint()
    worker_group = worker_group_ids() if rank == 0 else {}
    report_cb = RayReportCallback(objective_fn(cfg, config.get("objective"), device) if rank == 0 else None,
                                  extra=worker_group)
    callbacks: list[Callback] = [report_cb, *(config.get("callbacks") or ())]
    adv = shared_tensor(config.get("adversarial_set"))
    place = dict(run_dir=config["run_dir"], rank=rank, world_size=world, attempt=True,
                 mlflow_run_id=config.get("mlflow_run_id"), parent_run_id=config.get("parent_run_id"),
                 tags=config.get("tags"))
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / FINAL_FILE).is_file():  # finished before a restart: report it again
                final = json.loads((Path(d) / FINAL_FILE).read_text())
                _report_final({**final, **worker_group}, rank)
                return
            out = run_experiment(cfg, RunPlace(resume=Path(d) / CHECKPOINT_FILE, **place), callbacks=callbacks,
                                 adversarial_set=adv)
    else:
        out = run_experiment(cfg, RunPlace(**place), callbacks=callbacks, adversarial_set=adv)
    final = final_report(cfg, out.results, report_cb.final_objective if config.get("objective") else None)
    _report_final({**final, **worker_group}, rank, out.run_dir if rank == 0 else None)


def _report_final(final: dict, rank: int, run_dir: Path | None = None) -> None:
    """The last report: rank 0 attaches a small checkpoint (``final.json`` and the run's
    ``results.json``) so that Train keeps these metrics as the run's result."""
    if rank != 0:
        ray.train.report(final)
        return
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / FINAL_FILE).write_text(json.dumps(final))
        if run_dir is not None and (Path(run_dir) / "results.json").is_file():
            shutil.copy(Path(run_dir) / "results.json", Path(d) / "results.json")
        ray.train.report(final, checkpoint=Checkpoint.from_directory(d))


def shared_tensor(ref):
    """The adversarial set behind an ObjectRef as a torch tensor sharing the object store's
    read-only memory (no copy; nothing writes to it)."""
    if ref is None:
        return None
    import warnings

    import torch

    arr = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": it is only read
        return torch.from_numpy(arr)


def objective_fn(cfg: ExperimentConfig, objective, device):
    """The objective of a Tune trial, ``fn(model) -> float``: the space's metric ``objective``
    (``"clean"``, a white-box attack of ``eval.attacks``, or ``"<label> (transfer)"``) on the
    run's whole validation split (``data.val_size``, carved from the training set exactly as the
    run carves it) -- never on test images. A transfer metric is measured against the run's
    transfer source and only after the last epoch (``fn.final_only``); ``fn.data`` is the set
    it measures; the value is an accuracy in percent. None without ``objective``; ValueError
    when the config holds no validation split out."""
    if not objective:
        return None
    label = objective[0] if isinstance(objective, (tuple, list)) else objective  # (label, size) of older drivers
    from rkd.data.loader import make_loader
    from rkd.evaluation.robust_accuracy import eval_subset
    from rkd.experiment.builders import build_data

    val_set = build_data(cfg.data).validation
    if val_set is None:
        raise ValueError(f"the objective {label!r} is measured on a validation split, and data.val_size is 0: "
                         "set data.val_size (a Tune space sets it from val_samples)")
    data = eval_subset(val_set, None)
    if label.endswith(TRANSFER_SUFFIX):
        return _transfer_objective(cfg, label[: -len(TRANSFER_SUFFIX)], data, device)
    from rkd.attacks import build_attack
    from rkd.evaluation import accuracy
    from rkd.evaluation.robust_accuracy import attack_params

    loader = make_loader(data, cfg.data.eval_batch_size)
    attack = None
    if label != "clean":
        a = next(a for a in cfg.eval.attacks if a.label == label)
        attack = build_attack(a.kind, **attack_params(a, data))

    def fn(model):
        import torch

        torch.manual_seed(cfg.eval.seed)
        return PERCENT * accuracy(model, loader, device, attack)

    fn.data = data
    return fn


def _transfer_objective(cfg: ExperimentConfig, label: str, data, device):
    """A transfer metric on the validation split: the attack of ``eval.transfer`` labelled
    ``label`` runs against the transfer source (loaded on first use, from its cache), through
    the same on-disk adversarial cache as the final evaluation."""
    from rkd.evaluation.robust_accuracy import transfer_entries

    ev = cfg.resolved_eval()
    attacks = [a for a in ev.transfer.attacks if a.label == label]
    ev = ev.model_copy(update={"transfer": ev.transfer.model_copy(update={"attacks": attacks})})
    source: list = []

    def fn(model):
        from rkd.experiment.pipeline import load_teacher

        if not source:
            source.append(load_teacher(cfg.transfer_source(), device, tracking=cfg.tracking,
                                       output_dir=cfg.output_dir)[0])
        entries = transfer_entries(model, data, ev, source=source[0], source_label=None, device=device,
                                   batch_size=cfg.data.eval_batch_size)
        return PERCENT * entries[0]["accuracy"]

    fn.final_only = True
    fn.data = data
    return fn


# ----------------------------------------------------------------------------------- driver
def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with the paths workers must agree on made absolute (tracking URI, output dir)."""
    tracking = cfg.tracking.model_copy(update={"tracking_uri": absolute_tracking_uri(cfg.tracking.tracking_uri)})
    return cfg.model_copy(update={"tracking": tracking, "output_dir": str(Path(cfg.output_dir).resolve())})


def scaling_config(cfg: ExperimentConfig) -> ScalingConfig:
    s = cfg.scaling
    return ScalingConfig(num_workers=max(1, s.num_workers), use_gpu=s.use_gpu,
                         resources_per_worker=dict(s.resources_per_worker) or None)


def storage_path(cfg: ExperimentConfig) -> str:
    return str(Path(cfg.scaling.storage_path or Path(cfg.output_dir) / "ray_results").resolve())


def trainer_for(cfg: ExperimentConfig, run_dir: Path, *, mlflow_run_id: str | None, parent_run_id: str | None = None,
                tags: dict | None = None, adversarial_set=None, objective=None, worker_callbacks: list | None = None,
                callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer of one run (``run_dir`` also names its Ray run and checkpoints).
    ``worker_callbacks``: trainer callbacks for every worker; ``callbacks``: Ray Train's."""
    loop_config = {"cfg": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "cwd": os.getcwd(),
                   "mlflow_run_id": mlflow_run_id, "parent_run_id": parent_run_id, "tags": tags or {},
                   "adversarial_set": adversarial_set, "objective": objective, "plugins": plugin_sources(),
                   "callbacks": worker_callbacks or []}
    return TorchTrainer(
        train_func, train_loop_config=loop_config, scaling_config=scaling_config(cfg),
        run_config=RunConfig(name=run_dir.name, storage_path=storage_path(cfg),
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=callbacks or None),
    )


def fit(cfg: ExperimentConfig, *, run_dir: str | Path | None = None, parent_run_id: str | None = None,
        tags: dict | None = None, worker_callbacks: list | None = None) -> RunOutput | dict:
    """Train and evaluate one run as configured by ``cfg.scaling``: in-process when
    ``num_workers`` is 0, else as a TorchTrainer on the connected Ray cluster. Returns the
    :class:`RunOutput` (in-process) or the final metrics reported by rank 0 (Ray)."""
    if cfg.scaling.num_workers == 0:
        return run_experiment(cfg, RunPlace(run_dir=run_dir, parent_run_id=parent_run_id, tags=tags or {}),
                              callbacks=worker_callbacks or ())
    cfg = absolute_paths(cfg)
    from rkd.orchestration.stages import train_stages

    train_stages([cfg], parent_run_id=parent_run_id)  # on the workers, with their own configs' resources
    run_dir = Path(run_dir).resolve() if run_dir is not None else unique_dir(cfg.output_dir, cfg.name)
    run_tags = {"rkd.method": cfg.method.name, "rkd.dataset": cfg.data.dataset, "rkd.arch": cfg.model.arch,
                "rkd.run_dir": str(run_dir), "rkd.ray_workers": cfg.scaling.num_workers, **(tags or {})}
    run_id = create_run(cfg.tracking, cfg.name, tags=run_tags, parent_run_id=parent_run_id)
    try:
        result = trainer_for(cfg, run_dir, mlflow_run_id=run_id, parent_run_id=parent_run_id, tags=tags,
                             worker_callbacks=worker_callbacks).fit()
    except Exception as exc:
        end_run(cfg.tracking, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    return {**(result.metrics or {}), "run_dir": str(run_dir), "mlflow_run_id": run_id}
