"""A paper table as one job on the cluster: every stage where the runs run, the rows in parallel.

:func:`run_table` takes the table's rows (``{name: (config, run directory)}``), plans their
stages (:func:`rkd.experiment.stage_graph.plan_table`: every teacher, MAE stage and source
the rows load, once each) and submits the whole graph to Ray at once:

* each stage is a Ray task with the resources of its own config (:func:`task_options`: one
  worker's ``scaling.resources_per_worker``, a GPU when ``use_gpu``), so it trains on a node that
  offers them -- a GPU worker, never a CPU-only head -- and starts as soon as the stages it
  loads have finished (their results are the task's arguments);
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
from rkd.config.methods import import_plugin, plugin_sources
from rkd.experiment import RunPlace, ensure_teacher, run_experiment
from rkd.experiment.chain_data import require_chain_data
from rkd.experiment.run_dir import run_status
from rkd.experiment.stage_graph import TablePlan, plan_table, stage_label
from rkd.orchestration.train import absolute_paths, fit
from rkd.tracking import check_tracking, create_run, end_run, prepare_store

NODE_TAG = "rkd.node_id"


def task_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray task options for a stage or row of ``cfg``: one worker's resources (CPU 1 unless
    ``resources_per_worker`` says otherwise; GPU 1 with ``use_gpu``; custom resources as given),
    or none for a coordinator of a TorchTrainer (``scaling.num_workers > 0``)."""
    s = cfg.scaling
    if s.num_workers > 0:
        return {"num_cpus": 0}
    res = dict(s.resources_per_worker)
    opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 1), "num_gpus": res.pop("GPU", 1 if s.use_gpu else 0)}
    if res:
        opts["resources"] = res
    return opts


def _enter(cwd: str, plugins: list[str]) -> str:
    """In a task: the driver's working directory and method plugins; returns the node id."""
    os.chdir(cwd)  # relative paths in the configs (data roots, presets) mean what they meant to the driver
    for source in plugins:
        import_plugin(source)
    return ray.get_runtime_context().get_node_id()


@ray.remote(max_retries=0)
def _stage_task(key: str, payload: dict, cwd: str, plugins: list[str], *needs) -> dict:
    """Train (or find) one cached model. ``needs``: the results of the stages it loads."""
    from rkd.config.schema import TeacherConfig

    node = _enter(cwd, plugins)
    cfg, spec = config_from_dict(payload["cfg"]), TeacherConfig(**payload["spec"])
    t0 = time.monotonic()
    run = ensure_teacher(spec, tracking=cfg.tracking, output_dir=cfg.output_dir, tags={NODE_TAG: node})
    return {"key": key, "node_id": node, "trained_now": run.trained_now, "seconds": time.monotonic() - t0}


def run_row(cfg: ExperimentConfig, run_dir: Path, tags: dict) -> str:
    """Train one row into ``run_dir`` unless it finished before; resume it when interrupted.
    Returns what happened: ``reused``, ``resumed`` or ``trained``."""
    if (run_dir / "results.json").is_file():
        return "reused"
    if (run_dir / "config.yaml").is_file():
        if cfg.scaling.num_workers == 0 and any((run_dir / "checkpoints").glob("epoch_*.pt")):
            run_experiment(cfg, RunPlace(run_dir=run_dir, resume=True, tags=tags))
            return "resumed"
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stopped-{time.strftime('%Y%m%dT%H%M%S')}"))
    fit(cfg, run_dir=run_dir, tags=tags)
    return "trained"


@ray.remote(max_retries=0)
def _row_task(name: str, payload: dict, run_dir: str, cwd: str, plugins: list[str], *needs) -> dict:
    node = _enter(cwd, plugins)
    started = time.time()
    how = run_row(config_from_dict(payload), Path(run_dir), {NODE_TAG: node, "rkd.row": name})
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
    run_id = create_run(cfg.tracking, cfg.name, tags={"rkd.row": name, "rkd.run_dir": str(run_dir)})
    end_run(cfg.tracking, run_id, "FAILED", error)


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the task's own exception
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:2000]


def submit(plan: TablePlan, run_dirs: dict[str, Path]) -> tuple[dict, dict]:
    """Every stage and row of ``plan`` as Ray tasks; ``(stage refs by key, row refs by name)``."""
    cwd, plugins = os.getcwd(), plugin_sources()
    stages: dict[str, ray.ObjectRef] = {}
    for key, st in plan.stages.items():  # in dependency order: needs were added first
        payload = {"cfg": st.cfg.model_dump(mode="json"), "spec": st.spec.model_dump(mode="json")}
        stages[key] = _stage_task.options(name=f"stage {stage_label(key)}", **task_options(st.cfg)).remote(
            key, payload, cwd, plugins, *[stages[k] for k in st.needs])
    rows = {name: _row_task.options(name=f"row {name}", **task_options(row.cfg)).remote(
                name, row.cfg.model_dump(mode="json"), str(run_dirs[name]), cwd, plugins,
                *[stages[k] for k in row.needs])
            for name, row in plan.rows.items()}
    return stages, rows


def run_table(rows: dict[str, tuple[ExperimentConfig, Path]], *,
              on_end: Callable[[RowOutcome], None] | None = None) -> dict[str, RowOutcome]:
    """Run a table on the connected Ray cluster; returns each row's outcome (never raises for
    a failed row). ``on_end(outcome)`` is called as each row ends."""
    cfgs = {name: absolute_paths(cfg) for name, (cfg, _) in rows.items()}
    run_dirs = {name: Path(d).resolve() for name, (_, d) in rows.items()}
    plan = plan_table(cfgs)
    for cfg in cfgs.values():  # before any work: every stage's data, the stores (created once, here)
        require_chain_data(cfg, cfg.output_dir)
        check_tracking(cfg.tracking)
        prepare_store(cfg.tracking)
    _, refs = submit(plan, run_dirs)
    by_ref = {ref: name for name, ref in refs.items()}
    out: dict[str, RowOutcome] = {}
    pending = list(refs.values())
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        name = by_ref[done[0]]
        try:
            r = ray.get(done[0])
            outcome = RowOutcome(name, run_dirs[name], r["how"], r["node_id"], r["started"], r["ended"])
        except Exception as exc:  # noqa: BLE001 -- a failed row is an outcome, not the table's end
            outcome = RowOutcome(name, run_dirs[name], error=_one_line(exc))
            _record_unstarted(cfgs[name], name, run_dirs[name], outcome.error)
        out[name] = outcome
        if on_end is not None:
            on_end(outcome)
    return out
