"""Ray Tune: a sweep over a validated space (``tune_spaces/*.yaml``), one trial per sample.

* The space is validated before Ray starts (:func:`rkd.config.tune_space.load_space`).
* One MLflow parent run per sweep; each trial logs into its own nested run
  (``mlflow.parentRunId``), found again by its trial id when the trial is retried or the sweep
  resumed, so a trial is one run. Trials that fail end FAILED, trials a scheduler stops KILLED.
* A trial runs :func:`rkd.experiment.run_experiment` in-process (``scaling.num_workers: 0``), or
  builds a TorchTrainer with :class:`~ray.tune.integration.ray_train.TuneReportCallback` that
  forwards rank 0's reports to Tune.
* Model selection never sees the test set: every trial holds a validation split out of its
  training set (``data.val_size`` = the space's ``val_samples`` unless the base config sets one;
  :meth:`~rkd.config.tune_space.LoadedSpace.trial_config`). Each epoch reports ``objective`` =
  the space's metric on that split (what ASHA reads; a transfer metric after the last epoch
  only); the final report carries it with the final weights, next to every test accuracy of
  ``results.json`` (``acc.*``), and the sweep's best trial is the best final ``objective``.
* The models the trials load (teachers, MAE stages, sources) are trained once before the
  trials, each as a Ray task with its own config's resources (:mod:`rkd.orchestration.stages`).
  A method's shared training data (MACD's one-time adversarial set) is built (or read from its
  disk cache) once by such a task, not the driver, and kept in the object store as one
  contiguous read-only numpy array; every trial whose data has the base config's identity reads it from there
  (:func:`shared_training_data`).
* Progress: one plain line on stderr per trial that ends, with ``k/N``, the elapsed time and an
  ETA (:class:`SweepProgress`); Ray's forwarded worker lines lose their colour codes when the
  console is not a terminal (:func:`rkd.orchestration.plain_console`).
* ``resume=True`` restores an interrupted sweep (``Tuner.restore``): finished trials are kept,
  unfinished and errored ones continue from their checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from rkd.config import ExperimentConfig
from rkd.config.methods import import_plugin, plugin_sources
from rkd.config.tune_space import Distribution, LoadedSpace, load_space
from rkd.engine.device import device_for_grant
from rkd.evaluation import read_results
from rkd.evaluation.figures import save_png, tradeoff_figure
from rkd.evaluation.metric_names import is_accuracy_metric
from rkd.experiment import RunPlace, ensure_named_models, run_experiment
from rkd.experiment.progress import Progress, clock
from rkd.experiment.run_dir import require_writable
from rkd.methods import get_method
from rkd.orchestration import plain_console
from rkd.orchestration.stages import build_shared_data, train_stages
from rkd.orchestration.train import (
    CHECKPOINT_FILE,
    DONE_KEY,
    EPOCH_KEY,
    RayReportCallback,
    absolute_paths,
    final_report,
    objective_fn,
    shared_tensor,
    storage_path,
    trainer_for,
)
from rkd.orchestration.worker_groups import OrphanedWorkerGroups
from rkd.tracking import check_tracking, create_run, end_run, end_tagged_runs, finish_run
from rkd.tracking.mlflow_tracker import NOTE_TAG, note_text

STATE_FILE = "rkd_sweep.json"
#: a trial that launches a TorchTrainer only coordinates it (Tune refuses a zero request)
COORDINATOR_CPU = 0.01


def to_tune(dist: Distribution):
    """A parsed distribution as a Ray Tune search-space object."""
    k, a = dist.kind, dist.args
    if k == "grid":
        return tune.grid_search(list(a))
    if k == "choice":
        return tune.choice(list(a))
    if k == "uniform":
        return tune.uniform(a[0], a[1])
    if k == "loguniform":
        return tune.loguniform(a[0], a[1])
    if k == "randint":
        return tune.randint(a[0], a[1])
    if k == "quniform":
        return tune.quniform(a[0], a[1], a[2])
    raise AssertionError(k)


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What one trial occupies: its in-process run, or its TorchTrainer's workers (the trial
    function itself then only coordinates)."""
    s = cfg.scaling
    per = {"CPU": 1.0, **{k.upper() if k.lower() in ("cpu", "gpu") else k: float(v)
                          for k, v in s.resources_per_worker.items()}}
    if s.use_gpu:
        per.setdefault("GPU", 1.0)
    n = max(1, s.num_workers)
    need = {k: v * n for k, v in per.items()}
    if s.num_workers > 0:
        need["CPU"] = need.get("CPU", 0) + COORDINATOR_CPU
    return need


def max_concurrent(cfg: ExperimentConfig, requested: int | None) -> int:
    """Trials that fit the cluster at once (``requested`` caps it)."""
    total = ray.cluster_resources()
    need = trial_resources(cfg)
    fits = min(int(total.get(k, 0) // v) for k, v in need.items() if v > 0)
    if fits < 1:
        raise RuntimeError(f"one trial needs {need}, the cluster has {dict(total)}")
    return min(fits, requested) if requested else fits


def shared_training_data(cfg: ExperimentConfig):
    """The base config's shared training data (its method's, e.g. MACD's one-time adversarial
    set), loaded from (or built into) its disk cache once by a task with the run's resources
    (not the driver), its result kept in the object store as a contiguous read-only float32
    numpy array. Returns ``(ObjectRef, identity)`` -- the identity says which trials may use
    it -- or ``(None, None)``."""
    spec = get_method(cfg.method.name).shared_data
    ident = spec.identity(cfg) if spec is not None else None
    if ident is None:
        return None, None
    return build_shared_data(absolute_paths(cfg)), ident


def shared_data_identity(cfg: ExperimentConfig) -> str | None:
    """What a run's shared training data depends on (None: it uses none)."""
    spec = get_method(cfg.method.name).shared_data
    return spec.identity(cfg) if spec is not None else None


def granted_device(device: str) -> str:
    """``device: auto`` in a Ray task or actor: CUDA only when Ray granted this process a GPU
    (:func:`rkd.engine.device.device_for_grant`)."""
    return device_for_grant(device, ray.get_gpu_ids())


def _trial(config: dict[str, Any], *, space_path: str, sweep: str, parent_run_id: str | None, shared,
           cwd: str, plugins: list[str]) -> None:
    """One trial: the base config with this sample; reports each epoch and at the end."""
    os.chdir(cwd)  # relative paths in the config (teacher caches, data) mean what they meant to the driver
    for source in plugins:
        import_plugin(source)
    space = load_space(space_path)
    sample = {k: config[k] for k in space.params}
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    base = space.trial_config(sample)
    cfg = absolute_paths(space.trial_config(sample, [f"name={base.name}-{trial_id}"]))
    cfg = cfg.model_copy(update={"device": granted_device(cfg.device)})
    run_dir = Path(cfg.output_dir) / sweep / trial_id
    tags = {"rkd.sweep": sweep, "rkd.trial_id": trial_id, "rkd.method": cfg.method.name,
            "rkd.sample": json.dumps(sample), "rkd.role": "sweep trial",
            "rkd.label": f"{sweep} trial {trial_id}: " + ", ".join(f"{k}={v}" for k, v in sample.items())}
    ref, ref_key = shared
    ident = shared_data_identity(cfg)
    adv = ref if ref is not None and ident == ref_key else None
    if ident is not None:
        tags["rkd.shared_data"] = "object_store" if adv is not None else "disk_cache"
    run_id = create_run(cfg.tracking, cfg.name, tags=tags, parent_run_id=parent_run_id,
                        find_tag=("rkd.trial_id", trial_id))
    objective = space.spec.metric  # measured on the trial's validation split (cfg.data.val_size)
    try:
        if cfg.scaling.num_workers == 0:
            _run_in_process(cfg, run_dir, run_id, parent_run_id, tags, adv, objective)
        else:
            ensure_named_models(cfg, parent_run_id=parent_run_id)
            trainer_for(cfg, run_dir, mlflow_run_id=run_id, parent_run_id=parent_run_id, tags=tags,
                        adversarial_set=adv, objective=objective, callbacks=[TuneReportCallback()]).fit()
    except Exception as exc:  # not SystemExit: Tune ends a finished or stopped trial's thread with it
        end_run(cfg.tracking, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise


def _run_in_process(cfg, run_dir, run_id, parent_run_id, tags, adv_ref, objective) -> None:
    from rkd.experiment import resolve_device

    checkpoint = tune.get_checkpoint()
    cb = RayReportCallback(objective_fn(cfg, objective, resolve_device(cfg.device)), report=tune.report,
                           checkpoint_cls=tune.Checkpoint)
    place = dict(run_dir=run_dir, mlflow_run_id=run_id, attempt=True, parent_run_id=parent_run_id, tags=tags)
    kwargs = dict(callbacks=[cb], adversarial_set=shared_tensor(adv_ref))
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            out = run_experiment(cfg, RunPlace(resume=Path(d) / CHECKPOINT_FILE, **place), **kwargs)
    else:
        out = run_experiment(cfg, RunPlace(**place), **kwargs)
    tune.report(final_report(cfg, out.results, cb.final_objective))


class _TrialEnd(tune.Callback):
    """Driver side, for trials that end without their final report: a trial the scheduler stops
    is ended KILLED in MLflow (its process is gone), a trial whose process died FAILED; the
    placement group of its Train workers is removed once they are dead
    (:class:`~rkd.orchestration.worker_groups.OrphanedWorkerGroups`)."""

    def __init__(self, tracking):
        self.tracking = tracking
        self.groups = OrphanedWorkerGroups()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "FAILED")

    def _ended(self, trial, status: str) -> None:
        last = trial.last_result or {}
        if last.get(DONE_KEY) == 1:
            return
        self.groups.watch(last)
        if self.tracking.enabled:  # a run the trial ended itself (FAILED, FINISHED) stays as it is
            tag = "rkd.stopped_at_epoch" if status == "KILLED" else "rkd.failed_at_epoch"
            end_tagged_runs(self.tracking, "rkd.trial_id", trial.trial_id, status, {tag: last.get(EPOCH_KEY)})

    def on_step_begin(self, iteration, trials, **info):
        self.groups.release()

    def on_experiment_end(self, trials, **info):
        self.groups.drain()  # the trials stopped last: their workers die after the sweep's last step


def sweep_total(space: LoadedSpace) -> int:
    """The trials of a sweep, Ray's semantics: ``num_samples`` times every combination of the
    ``grid`` parameters (``tune.grid_search``); every other distribution is drawn once per sample."""
    n = space.spec.num_samples
    for d in space.params.values():
        if d.kind == "grid":
            n *= len(d.args)
    return n


def trial_outcome(last: dict, error: bool) -> str:
    """How a trial ended, from its last report: ``TERMINATED`` (its final report came),
    ``ERROR at epoch 2``, ``stopped at epoch 2`` (a scheduler stopped it)."""
    epoch = last.get(EPOCH_KEY)
    at = f" at epoch {epoch}" if epoch is not None else ""
    if error:
        return f"ERROR{at}"
    return "TERMINATED" if last.get(DONE_KEY) == 1 else f"stopped{at}"


class SweepProgress(tune.Callback):
    """Driver side: one plain line on stderr (no ANSI codes: fit for a terminal and a log file)
    per trial that ends, e.g. ``[sweep s] trial 3/8 5f0c1_00002 finished (stopped at epoch 2) in
    1m12s | elapsed 4m01s | about 6m00s left``; a trial Tune retries says so. The count includes
    trials that ended before a resume; the ETA (:class:`~rkd.experiment.progress.Progress`) is the
    mean trial time times the trials left over the trials that run at once. ``total=None``: the
    line says ``trial 3`` and gives no ETA. Tune pickles its callbacks with the sweep (a resumed
    sweep runs the pickled one), so this one keeps no stream: it writes to ``out or sys.stderr``."""

    ENDED = ("TERMINATED", "ERROR")

    def __init__(self, sweep: str, total: int | None, parallel: int = 1, out=None, now=time.monotonic):
        self.sweep, self.out = sweep, out
        self.progress = Progress(total, out=None, now=now, parallel=parallel)
        self.started: dict[str, float] = {}

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        """Tune's own count of the trials (grid included) where it has one; the clock starts now."""
        if total_num_samples and 0 < total_num_samples <= sys.maxsize:  # num_samples=-1: sys.maxsize and more
            self.progress.total = int(total_num_samples)
        self.progress.start = self.progress.now()
        self.started = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, self.progress.now())

    def on_trial_recover(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get(EPOCH_KEY)
        self._write(f"trial {trial.trial_id} failed{f' at epoch {epoch}' if epoch is not None else ''}, "
                    "retrying from its last checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trials, trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, error=True)

    def _ended(self, trials, trial, error: bool) -> None:
        last = trial.last_result or {}
        t0 = self.started.pop(trial.trial_id, None)
        seconds = self.progress.now() - t0 if t0 is not None else last.get("time_total_s")
        ended = {t.trial_id for t in trials if t.status in self.ENDED} | {trial.trial_id}
        tail = self.progress.record(seconds, index=max(len(ended), self.progress.finished + 1))
        took = f" in {clock(seconds)}" if seconds is not None else ""
        self._write(f"trial {self.progress.count()} {trial.trial_id} finished ({trial_outcome(last, error)})"
                    f"{took}{tail}")

    def _write(self, text: str) -> None:
        print(f"[sweep {self.sweep}] {text}", file=self.out if self.out is not None else sys.stderr, flush=True)


def _scheduler(space: LoadedSpace):
    s = space.spec.scheduler
    if s.name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: a trial that survives every rung runs to its own end (its final
    # report carries the evaluation on the whole test set); ASHA's default would stop it at its
    # last epoch report, before that evaluation
    return ASHAScheduler(time_attr=EPOCH_KEY, max_t=s.max_t or space.base.train.epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         stop_last_trials=False)


def _searcher(space: LoadedSpace):
    if space.spec.searcher != "optuna":
        return None  # random sampling and grid_search are Tune's basic variant generator
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - optional extra
        raise RuntimeError("searcher 'optuna' needs: pip install 'rkd[optuna]'") from exc
    return OptunaSearch()


def run_sweep(space_path: str | Path, *, resume: bool = False, name: str | None = None,
              max_concurrent_trials: int | None = None) -> dict:
    """Run (or resume) the sweep of a space file on the connected Ray cluster; returns a
    summary: the best trial's sample and metric, every trial's status and metrics, where the
    sweep lives. Ray must be initialised (:func:`rkd.orchestration.connect`)."""
    space = load_space(space_path)  # before any work: a bad space fails here
    space_path = str(Path(space_path).resolve())
    base = absolute_paths(space.base)
    sweep = name or f"sweep-{space.name}"
    root = Path(storage_path(base))
    state_file = root / sweep / STATE_FILE
    state = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
    if resume and not tune.Tuner.can_restore(str(root / sweep)):
        raise FileNotFoundError(f"no sweep to resume at {root / sweep}")
    if not resume and (root / sweep).exists():
        raise FileExistsError(f"sweep {sweep} exists under {root}; resume it (--resume) or name another")

    # save the sweep's state at least every second (Tune's default adapts up to minutes): a killed
    # driver then loses at most a second of bookkeeping, and resume skips every finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    check_tracking(base.tracking)
    require_writable(base.output_dir)
    parent_id = state.get("parent_run_id") or create_run(
        base.tracking, sweep, tags={"rkd.kind": "sweep", "rkd.space": space_path, "rkd.metric": space.spec.metric,
                                    "rkd.role": "sweep", "rkd.label": f"sweep of {space_path} ({space.spec.metric})"})
    # teachers, MAE stages, sources: once, before the trials, on the workers (rkd.orchestration.stages)
    train_stages([absolute_paths(base)], parent_run_id=parent_id)
    shared = shared_training_data(base)
    (root / sweep).mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"parent_run_id": parent_id, "space": space_path}))

    trainable = tune.with_resources(
        tune.with_parameters(_trial, space_path=space_path, sweep=sweep, parent_run_id=parent_id, shared=shared,
                             cwd=os.getcwd(), plugins=plugin_sources()),
        trial_resources(base) if base.scaling.num_workers == 0 else {"CPU": COORDINATOR_CPU})
    plain_console()  # also for a cluster that connect() did not start
    if resume:  # Tune restores the callbacks pickled with the sweep (SweepProgress included)
        tuner = tune.Tuner.restore(str(root / sweep), trainable, resume_unfinished=True, resume_errored=True)
    else:
        params = {k: to_tune(d) for k, d in space.params.items()}
        concurrent = max_concurrent(base, max_concurrent_trials or space.spec.max_concurrent_trials)
        callbacks = [_TrialEnd(base.tracking), SweepProgress(sweep, sweep_total(space), parallel=concurrent)]
        tuner = tune.Tuner(
            trainable, param_space=params,
            tune_config=tune.TuneConfig(metric="objective", mode=space.spec.mode, num_samples=space.spec.num_samples,
                                        scheduler=_scheduler(space), search_alg=_searcher(space),
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=sweep, storage_path=str(root), callbacks=callbacks,
                                      failure_config=tune.FailureConfig(
                                          max_failures=max(0, base.scaling.max_failures))),
        )
    grid = tuner.fit()
    trials = []
    for r in grid:
        trials.append({"trial_id": r.metrics.get("trial_id") if r.metrics else None,
                       "config": {k: r.config.get(k) for k in space.params} if r.config else None,
                       "metrics": {k: v for k, v in (r.metrics or {}).items()
                                   if k == "objective" or is_accuracy_metric(k) or k in (EPOCH_KEY, DONE_KEY)},
                       "error": str(r.error)[-500:] if r.error else None, "path": r.path})
    best = None
    finished = [t for t in trials if t["metrics"].get(DONE_KEY) == 1 and not t["error"]]
    if finished:
        sign = 1 if space.spec.mode == "max" else -1
        best = max(finished, key=lambda t: sign * t["metrics"]["objective"])
    summary = {"sweep": sweep, "path": str(root / sweep), "metric": space.spec.metric, "mode": space.spec.mode,
               "parent_run_id": parent_id, "trials": trials, "best": best}
    _finish_parent(base, parent_id, summary, root / sweep)
    return summary


def _finish_parent(base: ExperimentConfig, parent_id: str | None, summary: dict, where: Path) -> None:
    (where / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    best = summary["best"]
    errors = any(t["error"] for t in summary["trials"])
    tags = {NOTE_TAG: sweep_note(summary), **({"rkd.best_sample": json.dumps(best["config"])} if best else {})}
    figure = tradeoff_figure(trial_rows(base, summary), title=f"sweep {summary['sweep']}: cost and robustness "
                             "(test split, for reading only; the search used the validation split)")
    artifacts = [where / "summary.json", *([save_png(figure, where / "tradeoff.png")] if figure else [])]
    finish_run(base.tracking, parent_id, "FAILED" if errors and not best else "FINISHED",
               metrics={"best_objective": best["metrics"]["objective"]} if best else None, tags=tags,
               artifacts=artifacts)


def trial_rows(base: ExperimentConfig, summary: dict) -> list[tuple[str, dict]]:
    """(sample, results) of each trial that finished its evaluation, for the trade-off figure."""
    rows = []
    for t in summary["trials"]:
        path = Path(base.output_dir) / summary["sweep"] / str(t["trial_id"]) / "results.json"
        if t["trial_id"] and path.is_file():
            sample = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (t["config"] or {}).items())
            rows.append((sample or str(t["trial_id"]), read_results(path)))
    return rows


def sweep_note(summary: dict) -> str:
    """The sweep parent run's description: each trial's sample and validation objective, best first."""
    sign = -1 if summary["mode"] == "max" else 1

    def rank(t):
        obj = t["metrics"].get("objective")
        return (obj is None, 0 if obj is None else sign * obj)

    trials = sorted(summary["trials"], key=rank)
    lines = [f"**Sweep {summary['sweep']}**: {summary['metric']} on each trial's validation split "
             f"({summary['mode']}), best first.", "", "| trial | sample | objective (%) | status |",
             "|---|---|---|---|"]
    for t in trials:
        sample = ", ".join(f"{k}={v}" for k, v in (t["config"] or {}).items())
        obj = t["metrics"].get("objective")
        status = "failed" if t["error"] else ("finished" if t["metrics"].get(DONE_KEY) == 1 else "stopped")
        lines.append(f"| {t['trial_id']} | {sample} | {'' if obj is None else f'{obj:.2f}'} | {status} |")
    return note_text("\n".join(lines), "summary.json")
