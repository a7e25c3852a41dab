"""The tags ``mlflow.start_run`` would set on a run -- who ran what, from which code -- for the
runs rkd creates with ``MlflowClient.create_run`` (which sets none of them), so that the MLflow
UI's Source, User and version columns are filled."""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
from pathlib import Path

from rkd import SOURCE_ENV  # set by the entry point, passed to Ray workers (their argv is Ray's)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 -- no user name in some containers
        return "unknown"


def run_label(cfg) -> str:
    """A readable label for a run of ``cfg`` (tag ``rkd.label``) when its caller has none."""
    return f"{cfg.name}: {cfg.method.name} on {cfg.data.dataset}, {cfg.model.arch}"


def model_role(requested_as: str | None, arch: str) -> str:
    """The ``rkd.role`` of a cached model's run: an MAE stage, else what the run that first
    needed it calls it (``teacher``, ``source``, ``clean teacher``)."""
    if arch.startswith("mae_"):
        return "mae stage"
    return (requested_as or "teacher").replace("_", " ")


def source_tags() -> dict[str, str]:
    from rkd import __version__

    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": _user(), "rkd.version": __version__,
            "mlflow.source.name": os.environ.get(SOURCE_ENV) or Path(sys.argv[0]).name or "python"}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags
