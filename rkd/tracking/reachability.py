"""Can this run's MLflow store be reached? Asked once, before any work, with a short timeout.

Without it an unreachable tracking server shows up minutes into a run (MLflow retries each
request for minutes) as a long traceback. :func:`check_tracking` answers in seconds:

* ``http(s)://`` -- a GET of the server's ``/health`` endpoint (``mlflow server`` serves it),
  ``timeout`` seconds;
* ``sqlite:///PATH`` and file stores -- the folder that will hold the database must exist and
  be writable.

A problem raises :class:`TrackingUnreachable` (a ``ConnectionError``) saying what failed and
the two ways on: start the server (or fix the URI), or ``tracking.enabled=false`` to run
without tracking.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from rkd.tracking.mlflow_tracker import resolve_tracking_uri

#: seconds a tracking server gets to answer /health
REACHABILITY_TIMEOUT_S = 5.0


class TrackingUnreachable(ConnectionError):
    """The configured MLflow store cannot be used."""


def _advice(uri: str) -> str:
    return (f"start the server or fix tracking.tracking_uri ({uri}), or run without tracking: "
            "tracking.enabled=false")


def check_tracking(tracking, timeout: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnreachable` if ``tracking`` (a TrackingConfig) is enabled and its
    store cannot be reached; return at once otherwise."""
    if not tracking.enabled:
        return
    uri = resolve_tracking_uri(tracking.tracking_uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnreachable(f"MLflow tracking server {uri} did not answer within {timeout:g} s "
                                      f"({reason}); {_advice(uri)}") from None
        return
    folder = _store_folder(uri)
    if folder is not None and not (folder.is_dir() and os.access(folder, os.W_OK)):
        state = "is not writable" if folder.is_dir() else "does not exist"
        raise TrackingUnreachable(f"MLflow store {uri}: folder {folder} {state}; {_advice(uri)}")


def _store_folder(uri: str) -> Path | None:
    """The folder a local store writes into (None: not a local store rkd can check)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] or ".").expanduser().absolute().parent
    if uri.startswith("file://"):
        return Path(uri[len("file://"):]).expanduser().absolute().parent
    if "://" not in uri:
        return Path(uri).expanduser().absolute().parent
    return None


__all__ = ["REACHABILITY_TIMEOUT_S", "TrackingUnreachable", "check_tracking"]
