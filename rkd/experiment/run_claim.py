"""An exclusive claim on a run directory, held while a process writes into it.

Two ``rkd train --run-dir D`` at once would both write ``D``'s checkpoints, ``model.pt``,
``results.json`` and ``run.json`` and each report success. The writer of a run therefore takes
an advisory lock (``fcntl.flock``) on ``D/.rkd-claim`` for as long as it runs: the second
process is refused at once, before any work, naming the directory and the holder's pid. The
kernel drops the lock when its process ends, however it ends (crash, ``kill -9``), so a claim
never outlives its holder and a stopped run can be resumed at once. Where ``flock`` is missing
(Windows) the claim is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

CLAIM_FILE = ".rkd-claim"


class RunDirInUse(FileExistsError):
    """Another live process is writing this run directory."""


@contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's claim for the ``with`` block; :class:`RunDirInUse` if taken."""
    if fcntl is None:
        yield
        return
    path = Path(run_dir) / CLAIM_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirInUse(f"{run_dir}: in use by another rkd process (pid {holder}); wait for it, "
                              "or give another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["CLAIM_FILE", "RunDirInUse", "claimed"]
