"""The cache of trained models that runs need (teachers, sources, MAE stages).

``run_dir`` specs name a finished run directory: its ``config.yaml`` and verified ``model.pt``.

``config`` specs name an experiment config trained **once** and cached. The cache key is the
SHA-256 of the config's identity (:func:`rkd.config.identity.identity`: every field but those
the schema marks as not changing the weights -- device, output and cache folders, tracking,
evaluation, scaling, progress); the run lives in ``<cache_dir>/<name>-<key12>/`` and is reused
by every later run naming the same model:

* a FINISHED run whose ``model.pt`` verifies is loaded as it is;
* an interrupted one (checkpoints, not finished) is resumed from its newest usable checkpoint;
* a corrupt ``model.pt`` (checksum mismatch) or a failed run without checkpoints is moved
  aside to ``<dir>.stale-<timestamp>`` with a warning and trained again.

A file lock (``<dir>.lock``) serialises concurrent runs on one machine that need the same
model: one trains it, the others wait and load it. This module does not train: the caller
passes the function that does (:func:`rkd.experiment.pipeline.ensure_teacher`).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rkd.config import ExperimentConfig, load_config
from rkd.config.identity import identity_key
from rkd.config.schema import TeacherConfig
from rkd.engine import CheckpointError, latest_checkpoint, verified_torch_load
from rkd.engine.file_lock import file_lock
from rkd.experiment.run_dir import run_status

DEFAULT_OUTPUT_DIR = "runs"


@dataclass
class TeacherRun:
    run_dir: Path
    cfg: ExperimentConfig
    key: str | None          # cache key (None for an explicit run_dir)
    trained_now: bool        # trained (or resumed) by this call rather than loaded
    state: dict | None = None  # the verified weights, when this call already read them


def teacher_key(cfg: ExperimentConfig) -> str:
    """SHA-256 (hex) of the parts of a resolved config that determine the trained weights."""
    return identity_key(cfg)


def teacher_config(spec: TeacherConfig) -> ExperimentConfig:
    if spec.config is not None:
        return load_config(spec.config, spec.overrides)
    path = Path(spec.run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"teacher.run_dir {spec.run_dir}: no config.yaml (not an rkd run directory)")
    return load_config(str(path))


def cached_teacher_dir(spec: TeacherConfig, cfg: ExperimentConfig | None = None,
                       output_dir: str = DEFAULT_OUTPUT_DIR) -> Path:
    cfg = cfg or teacher_config(spec)
    return Path(spec.resolved_cache_dir(output_dir)) / f"{cfg.name}-{teacher_key(cfg)[:12]}"


def _move_aside(run_dir: Path, why: str) -> None:
    base = run_dir.with_name(f"{run_dir.name}.stale-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    stale, i = base, 1
    while stale.exists():  # two in the same second
        i += 1
        stale = base.with_name(f"{base.name}-{i}")
    run_dir.rename(stale)
    warnings.warn(f"teacher cache {run_dir}: {why}; moved to {stale} and training it again", stacklevel=3)


#: ``train(cfg, run_dir, resume, key)`` trains a cached model's run (resume: from its checkpoints)
TrainFn = Callable[[ExperimentConfig, Path, bool, str], object]


def ensure_cached(spec: TeacherConfig, train: TrainFn, *, output_dir: str = DEFAULT_OUTPUT_DIR,
                  tracking=None) -> TeacherRun:
    """Make sure the model of ``spec`` exists as a finished run; ``train`` it if needed.

    ``output_dir`` (the requesting run's) roots the default cache and the model's own needs;
    ``tracking`` (the requester's) replaces the model config's MLflow settings, so that it is
    logged next to the run that needs it (neither is part of the key)."""
    cfg = teacher_config(spec)
    if tracking is not None:
        cfg = cfg.model_copy(update={"tracking": tracking})
    if spec.run_dir is not None:
        run_dir = Path(spec.run_dir)
        if not (run_dir / "model.pt").is_file():
            raise FileNotFoundError(f"teacher.run_dir {run_dir}: no model.pt (the run did not finish)")
        return TeacherRun(run_dir, cfg, None, False)

    cfg = cfg.model_copy(update={"output_dir": output_dir})
    key = teacher_key(cfg)
    run_dir = cached_teacher_dir(spec, cfg, output_dir)
    with file_lock(run_dir.with_name(run_dir.name + ".lock")):
        status = run_status(run_dir) if run_dir.is_dir() else None
        if status == "FINISHED" and (run_dir / "model.pt").is_file():
            try:
                return TeacherRun(run_dir, cfg, key, False, verified_torch_load(run_dir / "model.pt"))
            except CheckpointError as exc:
                _move_aside(run_dir, f"model.pt is unusable ({exc})")
        resume = run_dir.is_dir() and latest_checkpoint(run_dir / "checkpoints") is not None
        if run_dir.is_dir() and not resume:
            _move_aside(run_dir, f"an unfinished run (status {status}) without checkpoints")
        train(cfg, run_dir, resume, key)
        return TeacherRun(run_dir, cfg, key, True)
