"""Stopping a run from outside: Ctrl-C, ``kill``/``timeout``/Slurm/Kubernetes (SIGTERM).

A stopped run is KILLED, not FAILED, in ``run.json`` and in MLflow, and keeps its newest
per-epoch checkpoint, so ``rkd train --resume RUN_DIR`` continues it. SIGTERM gets the same
path as Ctrl-C: :func:`sigterm_as_interrupt` makes it raise :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so the ``with``/``finally`` blocks that record a
run's end run as they do for Ctrl-C.
"""

from __future__ import annotations

import signal
import threading

#: exceptions that mean "stopped from outside" (Tune ends a stopped trial's thread with SystemExit)
STOPPED = (KeyboardInterrupt, SystemExit)


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def _raise_terminated(signum, frame):
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


__all__ = ["STOPPED", "Terminated", "sigterm_as_interrupt"]
