"""Where a distillation method's teacher comes from (the ``method.teacher`` config section).

``run_dir``: a finished run directory: its ``config.yaml`` and verified ``model.pt``.

``config``: an experiment config trained **once** and cached. The cache key is the SHA-256 of
the teacher's fully resolved config without the keys that cannot change its weights
(``tracking``, ``output_dir``, ``device``, ``train.progress``, ``eval``, and ``scaling``, which says
how a run executes -- data-parallel workers average the same gradients); the run lives in
``<cache_dir>/<name>-<key12>/`` and is reused by every later run naming the same teacher:

* a FINISHED run whose ``model.pt`` verifies is loaded as it is;
* an interrupted one (checkpoints, not finished) is resumed from its newest usable checkpoint;
* a corrupt ``model.pt`` (checksum mismatch) or a failed run without checkpoints is moved
  aside to ``<dir>.stale-<timestamp>`` with a warning and trained again.

A file lock (``<dir>.lock``) serialises concurrent runs on one machine that need the same
teacher: one trains it, the others wait and load it.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from rkd.config import ExperimentConfig, load_config
from rkd.config.schema import TeacherConfig, TrackingConfig
from rkd.engine import CheckpointError, latest_checkpoint, verified_torch_load

#: config keys that do not influence a teacher's weights (left out of the cache key)
_NOT_IN_KEY = ("tracking", "output_dir", "device", "eval", "scaling")


@dataclass
class TeacherRun:
    run_dir: Path
    cfg: ExperimentConfig
    key: str | None          # cache key (None for an explicit run_dir)
    trained_now: bool        # trained (or resumed) by this call rather than loaded
    state: dict | None = None  # the verified weights, when this call already read them


def teacher_key(cfg: ExperimentConfig) -> str:
    """SHA-256 (hex) of the parts of a resolved config that determine the trained weights."""
    data = cfg.model_dump(mode="json")
    for k in _NOT_IN_KEY:
        data.pop(k, None)
    data["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def teacher_config(spec: TeacherConfig) -> ExperimentConfig:
    if spec.config is not None:
        return load_config(spec.config, spec.overrides)
    path = Path(spec.run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"teacher.run_dir {spec.run_dir}: no config.yaml (not an rkd run directory)")
    return load_config(str(path))


def cached_teacher_dir(spec: TeacherConfig, cfg: ExperimentConfig | None = None) -> Path:
    cfg = cfg or teacher_config(spec)
    return Path(spec.cache_dir) / f"{cfg.name}-{teacher_key(cfg)[:12]}"


def _status(run_dir: Path) -> str | None:
    p = run_dir / "run.json"
    try:
        return json.loads(p.read_text()).get("status") if p.is_file() else None
    except json.JSONDecodeError:
        return None


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _move_aside(run_dir: Path, why: str) -> None:
    base = run_dir.with_name(f"{run_dir.name}.stale-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    stale, i = base, 1
    while stale.exists():  # two in the same second
        i += 1
        stale = base.with_name(f"{base.name}-{i}")
    run_dir.rename(stale)
    warnings.warn(f"teacher cache {run_dir}: {why}; moved to {stale} and training it again", stacklevel=3)


def ensure_teacher(spec: TeacherConfig, *, parent_run_id: str | None = None,
                   tracking: TrackingConfig | None = None) -> TeacherRun:
    """Make sure the teacher exists as a finished run; train (or resume) it if needed.

    ``tracking`` (the student's) replaces the teacher config's own MLflow settings, so that a
    teacher trained for a student is logged next to it (tracking is not part of the cache key)."""
    from rkd.experiment import run_experiment  # the experiment layer trains teachers as runs

    cfg = teacher_config(spec)
    if tracking is not None:
        cfg = cfg.model_copy(update={"tracking": tracking})
    if spec.run_dir is not None:
        run_dir = Path(spec.run_dir)
        if not (run_dir / "model.pt").is_file():
            raise FileNotFoundError(f"teacher.run_dir {run_dir}: no model.pt (the run did not finish)")
        return TeacherRun(run_dir, cfg, None, False)

    key = teacher_key(cfg)
    run_dir = cached_teacher_dir(spec, cfg)
    with _locked(run_dir.with_name(run_dir.name + ".lock")):
        status = _status(run_dir) if run_dir.is_dir() else None
        if status == "FINISHED" and (run_dir / "model.pt").is_file():
            try:
                return TeacherRun(run_dir, cfg, key, False, verified_torch_load(run_dir / "model.pt"))
            except CheckpointError as exc:
                _move_aside(run_dir, f"model.pt is unusable ({exc})")
        resume = run_dir.is_dir() and latest_checkpoint(run_dir / "checkpoints") is not None
        if run_dir.is_dir() and not resume:
            _move_aside(run_dir, f"an unfinished run (status {status}) without checkpoints")
        run_experiment(cfg, run_dir=run_dir, resume=resume, parent_run_id=parent_run_id,
                       tags={"rkd.role": "teacher", "rkd.teacher_key": key})
        return TeacherRun(run_dir, cfg, key, True)


def named_models(cfg: ExperimentConfig) -> list[TeacherConfig]:
    """The cached models a run of ``cfg`` loads: its teacher, MACD's source, an MAE stage's
    ``start_from`` and the transfer protocol's source."""
    m = cfg.method
    specs = [getattr(m, "teacher", None), getattr(m, "source", None), getattr(m, "start_from", None),
             cfg.eval.transfer.source if cfg.eval.transfer is not None else None]
    return [s for s in specs if s is not None]


def ensure_named_models(cfg: ExperimentConfig, *, parent_run_id: str | None = None,
                        tracking: TrackingConfig | None = None) -> None:
    """Train (once) every model of :func:`named_models` that is not cached yet -- e.g. in a
    driver, before workers or trials that only load them start."""
    for spec in named_models(cfg):
        ensure_teacher(spec, parent_run_id=parent_run_id, tracking=tracking or cfg.tracking)


def load_teacher(spec: TeacherConfig, device="cpu", *, parent_run_id: str | None = None,
                 tracking: TrackingConfig | None = None) -> tuple[nn.Module, TeacherRun]:
    """The teacher network (eval mode, on ``device``) and where it came from."""
    from rkd.experiment import build_model

    run = ensure_teacher(spec, parent_run_id=parent_run_id, tracking=tracking)
    model = build_model(run.cfg)
    model.load_state_dict(run.state if run.state is not None else verified_torch_load(run.run_dir / "model.pt"))
    return model.to(device).eval(), run
