"""A run's directory: a fresh timestamped name, and its ``run.json`` record."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path


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


#: a folder a run writes to must have this much free space before the run starts
MIN_FREE_BYTES = 256 * 2**20


class OutputFolderError(OSError):
    """The output folder cannot be created or written, or its disk is (nearly) full."""


def require_writable(folder: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Before any work: ``folder`` exists or can be created, a file can be written in it, and
    its disk has ``min_free`` bytes free (checkpoints, caches, results); else an
    :class:`OutputFolderError` naming the folder and the way on."""
    import shutil
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rkd-write-check-"):
            pass
    except OSError as exc:
        raise OutputFolderError(f"output folder {folder} cannot be written ({exc.strerror or exc}); fix it, or choose "
                                "another (output_dir=DIR, --output-dir DIR)") from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OutputFolderError(f"output folder {folder}: {free / 2**20:.0f} MiB free on its disk, at least "
                                f"{min_free / 2**20:.0f} MiB needed for checkpoints, caches and results; free some, or "
                                "choose another (output_dir=DIR, --output-dir DIR)")


class RunRecordError(ValueError):
    """A run directory's ``run.json`` cannot be read (truncated, edited by hand)."""


def read_run_json(run_dir: Path) -> dict:
    """The run's record (``{}`` when there is none); :class:`RunRecordError` when it is corrupt."""
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{p} is not valid JSON ({exc}); restore it, or move {run_dir} aside") from None
    if not isinstance(data, dict):
        raise RunRecordError(f"{p} is not a run record (a JSON object); restore it, or move {run_dir} aside")
    return data


def write_run_json(run_dir: Path, **updates) -> None:
    data = {**read_run_json(run_dir), **updates}
    (Path(run_dir) / "run.json").write_text(json.dumps(data, indent=1))


def run_status(run_dir: Path) -> str | None:
    """The status in ``run.json`` (None when absent or unreadable)."""
    try:
        return read_run_json(run_dir).get("status")
    except RunRecordError:
        return None
