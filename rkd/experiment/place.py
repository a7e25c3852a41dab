"""Who and where a run is: one object instead of a pile of flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunPlace:
    """Where a run lives and which process of it this is.

    ``run_dir``: its directory (None: ``<output_dir>/<name>-<timestamp>``, created once
    everything could be built). ``resume``: False starts a new run; True continues the newest
    usable checkpoint in ``run_dir`` (and its MLflow run, from ``run.json``); a path continues
    that trainer checkpoint (an orchestrator's, e.g. Ray's ``get_checkpoint()``). ``attempt``:
    an orchestrator's (re)try of this same run, whose directory may hold files of an earlier
    try. ``rank``/``world_size``: the process in a data-parallel group (only rank 0 writes,
    tracks and evaluates). ``mlflow_run_id``: log into this run (created by a driver);
    ``parent_run_id``/``tags``: for a new MLflow run."""

    run_dir: Path | None = None
    resume: bool | Path = False
    attempt: bool = False
    rank: int = 0
    world_size: int = 1
    mlflow_run_id: str | None = None
    parent_run_id: str | None = None
    tags: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.run_dir is not None:
            object.__setattr__(self, "run_dir", Path(self.run_dir))
        if isinstance(self.resume, str):
            object.__setattr__(self, "resume", Path(self.resume))
        if self.resume is True and self.run_dir is None:
            raise ValueError("resume=True needs the run_dir to resume")
        object.__setattr__(self, "tags", dict(self.tags or {}))

    @property
    def writer(self) -> bool:
        """This process writes the run's files and tracks it."""
        return self.rank == 0

    @property
    def checkpoint(self) -> Path | None:
        """The trainer checkpoint given by an orchestrator, if any."""
        return self.resume if isinstance(self.resume, Path) else None
