"""A paper table as one job on the cluster: every stage where the runs run, the rows in parallel.

:func:`run_table` takes the table's rows (``{name: (config, run directory)}``), plans their
stages (:func:`rkd.experiment.stage_graph.plan_table`: every teacher, MAE stage and source
the rows load, once each) and submits the whole graph to Ray at once (:func:`run_plan`, which
the quickstart also uses with a plan of its own):

* each stage is a Ray task with the resources of its own config (or, when that config does not
  set ``scaling``, of the row that needs it; :mod:`rkd.orchestration.stages`), so it trains on a
  node that offers them -- a GPU worker, never a CPU-only head -- and starts as soon as the
  stages it loads have finished (their results are the task's arguments);
* each row is a task with its config's resources that starts after its own stages, so rows run
  concurrently as far as the cluster's resources allow; a row whose config asks for a Ray Train
  TorchTrainer (``scaling.num_workers > 0``) is a coordinating task without resources whose
  TorchTrainer asks for the workers;
* a stage needed by several rows runs once (one task per cache directory); two tables, or two
  invocations, that need the same stage meet at the teacher cache's lock and the second loads
  what the first trained (:mod:`rkd.experiment.model_cache`);
* a row that fails -- or whose stage failed -- is recorded FAILED (run.json and MLflow; a row
  that could not start gets a FAILED MLflow run naming the stage) and the others go on;
* a row that finished before (its results.json is there) is reused, one interrupted after a
  checkpoint is resumed, one stopped before its first checkpoint is set aside and trained again:
  running the same table again continues it.

Every stage and row records the Ray node it ran on (tag ``rkd.node_id``, in MLflow and
run.json). Paths are made absolute: a multi-node cluster needs them on shared storage, as
Ray Train's ``storage_path`` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from rkd.config import ExperimentConfig, config_from_dict
from rkd.config.methods import plugin_sources
from rkd.experiment import RunPlace, run_experiment
from rkd.experiment.chain_data import require_chain_data
from rkd.experiment.run_dir import require_writable, run_status
from rkd.experiment.stage_graph import TablePlan, plan_table
from rkd.orchestration.stages import NODE_TAG, enter_task, granted, stage_options, submit_stages
from rkd.orchestration.train import absolute_paths, fit
from rkd.tracking import check_tracking, create_run, end_run, prepare_store
from rkd.tracking.source_tags import run_label


def task_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray task options of a row: one worker's resources (:func:`~rkd.orchestration.stages.
    stage_options`), or none for the coordinator of a TorchTrainer (``scaling.num_workers > 0``),
    whose workers ask for theirs."""
    return {"num_cpus": 0} if cfg.scaling.num_workers > 0 else stage_options(cfg)


def run_row(cfg: ExperimentConfig, run_dir: Path, tags: dict, parent_run_id: str | None = None) -> str:
    """Train one row into ``run_dir`` unless it finished before; resume it when interrupted.
    Returns what happened: ``reused``, ``resumed`` or ``trained``."""
    if (run_dir / "results.json").is_file():
        return "reused"
    if (run_dir / "config.yaml").is_file():
        if cfg.scaling.num_workers == 0 and any((run_dir / "checkpoints").glob("epoch_*.pt")):
            run_experiment(cfg, RunPlace(run_dir=run_dir, resume=True, tags=tags, parent_run_id=parent_run_id))
            return "resumed"
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stopped-{time.strftime('%Y%m%dT%H%M%S')}"))
    fit(cfg, run_dir=run_dir, tags=tags, parent_run_id=parent_run_id)
    return "trained"


@ray.remote(max_retries=0)
def _row_task(name: str, payload: dict, run_dir: str, cwd: str, plugins: list[str], parent_run_id: str | None,
              tags: dict, *needs) -> dict:
    node = enter_task(cwd, plugins)
    started = time.time()
    cfg = config_from_dict(payload)
    if cfg.scaling.num_workers == 0:
        cfg = cfg.model_copy(update={"device": granted(cfg.device)})
    how = run_row(cfg, Path(run_dir), {NODE_TAG: node, "rkd.row": name, **tags}, parent_run_id)
    return {"row": name, "node_id": node, "how": how, "started": started, "ended": time.time()}


@dataclass
class RowOutcome:
    name: str
    run_dir: Path
    how: str | None = None        # reused | resumed | trained; None when it failed
    node_id: str | None = None
    started: float | None = None  # wall-clock seconds (time.time()) in the task
    ended: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else self.ended - self.started


def _record_unstarted(cfg: ExperimentConfig, name: str, run_dir: Path, error: str) -> None:
    """A row that never started (its stage failed) still gets a FAILED MLflow run saying why."""
    if run_status(run_dir) is not None:
        return  # it started: the run recorded its own end
    tags = {"rkd.row": name, "rkd.run_dir": str(run_dir), "rkd.role": "method", "rkd.label": run_label(cfg)}
    run_id = create_run(cfg.tracking, cfg.name, tags=tags)
    end_run(cfg.tracking, run_id, "FAILED", error)


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the task's own exception
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:2000]


def submit(plan: TablePlan, run_dirs: dict[str, Path], parent_run_id: str | None = None,
           tags: dict[str, dict] | None = None) -> tuple[dict, dict]:
    """Every stage and row of ``plan`` as Ray tasks; ``(stage refs by key, row refs by name)``.
    ``tags``: extra MLflow tags of a row's or a stage's run, by row name or stage key."""
    tags = tags or {}
    stages = submit_stages(plan, parent_run_id, tags)
    cwd, plugins = os.getcwd(), plugin_sources()
    rows = {name: _row_task.options(name=f"row {name}", **task_options(row.cfg)).remote(
                name, row.cfg.model_dump(mode="json"), str(run_dirs[name]), cwd, plugins, parent_run_id,
                tags.get(name, {}), *[stages[k] for k in row.needs])
            for name, row in plan.rows.items()}
    return stages, rows


def cpus_per_task(parallel: int) -> int:
    """The CPUs each task gets so that ``parallel`` run at once on the connected cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, parallel))


def check_before_work(cfgs) -> None:
    """Every config's output folder, chain data and tracking store, before any task starts; each store is
    created here, once (concurrent writers of a new sqlite store race to create its tables)."""
    cfgs = list(cfgs)
    for folder in {cfg.output_dir for cfg in cfgs}:
        require_writable(folder)
    for cfg in cfgs:
        require_chain_data(cfg, cfg.output_dir)
    stores = {(c.tracking.tracking_uri, c.tracking.experiment, c.tracking.enabled): c.tracking for c in cfgs}
    for tracking in stores.values():  # each store once, not once per row
        check_tracking(tracking)
        prepare_store(tracking)


def run_table(rows: dict[str, tuple[ExperimentConfig, Path]], *, parent_run_id: str | None = None,
              on_end: Callable[[RowOutcome], None] | None = None) -> dict[str, RowOutcome]:
    """Run a table on the connected Ray cluster; returns each row's outcome (never raises for
    a failed row). ``on_end(outcome)`` is called as each row ends."""
    cfgs = {name: absolute_paths(cfg) for name, (cfg, _) in rows.items()}
    run_dirs = {name: Path(d).resolve() for name, (_, d) in rows.items()}
    plan = plan_table(cfgs)
    check_before_work(cfgs.values())
    return run_plan(plan, run_dirs, parent_run_id=parent_run_id, on_row=on_end)


def run_plan(plan: TablePlan, run_dirs: dict[str, Path], *, parent_run_id: str | None = None,
             tags: dict[str, dict] | None = None,
             on_stage: Callable[[str, dict | None, str | None], None] | None = None,
             on_row: Callable[[RowOutcome], None] | None = None) -> dict[str, RowOutcome]:
    """Submit ``plan`` and follow every stage and row to its end: ``on_stage(key, record,
    error)`` and ``on_row(outcome)`` as each ends. Ctrl-C (KeyboardInterrupt) cancels every task
    still running -- each run inside ends KILLED -- and is raised again."""
    stages, rows = submit(plan, run_dirs, parent_run_id, tags)
    refs = {**{("stage", k): r for k, r in stages.items()}, **{("row", n): r for n, r in rows.items()}}
    out: dict[str, RowOutcome] = {}
    try:
        for (kind, key), result, error in as_completed(refs):
            if kind == "stage":
                if on_stage is not None:
                    on_stage(key, result, error)
                continue
            if error is None:
                outcome = RowOutcome(key, run_dirs[key], result["how"], result["node_id"], result["started"],
                                     result["ended"])
            else:
                outcome = RowOutcome(key, run_dirs[key], error=error)
                _record_unstarted(plan.rows[key].cfg, key, run_dirs[key], error)
            out[key] = outcome
            if on_row is not None:
                on_row(outcome)
    except KeyboardInterrupt:
        cancel(list(refs.values()))
        raise
    return out


def cancel(refs: list, grace_s: float = 10.0) -> None:
    """Stop tasks: a KeyboardInterrupt in each running one (its run ends KILLED, keeping its
    checkpoint), then, after ``grace_s``, the worker processes of those still running."""
    for ref in refs:
        ray.cancel(ref)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
    for ref in left:
        ray.cancel(ref, force=True)


def as_completed(refs: dict):
    """``(key, result, None)`` or ``(key, None, error line)`` for each ref as it completes."""
    by_ref = {ref: key for key, ref in refs.items()}
    pending = list(by_ref)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        key = by_ref[done[0]]
        try:
            yield key, ray.get(done[0]), None
        except Exception as exc:  # noqa: BLE001 -- a failed task is an outcome, not the table's end
            yield key, None, _one_line(exc)
