"""Ray orchestration (the only package that imports ray): Train, Tune, the object store.

* :mod:`.train` -- one run as a TorchTrainer (data-parallel workers, checkpoints each epoch,
  restarts, the same MLflow run across restarts); ``scaling.num_workers: 0`` runs in-process.
* :mod:`.tune` -- a sweep of a ``tune_spaces/*.yaml`` space: nested MLflow runs per trial, the
  one-time adversarial set shared through the object store, resumable.
* :func:`connect` -- join the cluster of ``$RAY_ADDRESS`` (``ray job submit`` sets it) or start a
  local one, passing the MLflow tracking URI to every worker.
"""

from __future__ import annotations

import os
import sys


def plain_console() -> None:
    """No ANSI colour codes in Ray's console output where stdout or stderr is not a terminal.

    What colours it (Ray 2.60): not Tune's own reporter -- ray/tune/experimental/output.py (the
    default output, ``RAY_AIR_NEW_OUTPUT=1``) prints plain text; it imports ``rich`` but never uses
    it, and the ``verbose`` level only chooses how much it prints. The colour is in the lines Ray
    forwards from the trials' processes: ``print_worker_logs`` in ray/_private/worker.py wraps each
    ``(pid=..., ip=...)`` prefix in colorama codes unless ``RAY_COLOR_PREFIX=0``, which it reads for
    every batch in the driver, so setting it after ``ray.init`` still applies (:func:`connect`
    calls this; a sweep calls it again for a cluster joined elsewhere). Left as Ray makes them, no
    switch turns them off: the green ``[repeated 3x across cluster]`` of its log deduplication
    (``_color`` in ray/_private/ray_logging/__init__.py; ``RAY_DEDUP_LOGS=0``, read when ray is
    imported, turns the deduplication off) and the cyan ``ray::ImplicitFunc.train()`` of a failed
    trial's traceback (``RayTaskError`` in ray/exceptions.py)."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def connect(address: str | None = None, *, num_cpus: int | None = None, tracking_uri: str | None = None) -> None:
    """``ray.init`` once: ``address`` (or ``$RAY_ADDRESS``) joins a running cluster, none
    starts a local one. Workers get ``MLFLOW_TRACKING_URI`` (absolute) through the runtime
    environment, so every process logs into the same store."""
    import ray

    from rkd.tracking import absolute_tracking_uri

    if ray.is_initialized():
        return
    plain_console()
    from rkd import SOURCE_ENV

    env = {"MLFLOW_TRACKING_URI": absolute_tracking_uri(tracking_uri),
           **({SOURCE_ENV: os.environ[SOURCE_ENV]} if SOURCE_ENV in os.environ else {}),
           "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
           "RAY_TRAIN_V2_ENABLED": "1"}
    address = address or os.environ.get("RAY_ADDRESS")
    # no address: start a new local cluster ("local"); plain ray.init() would instead join
    # whatever cluster /tmp/ray/ray_current_cluster names (e.g. a stale one from `ray start`)
    # a local cluster keeps Ray's dashboard (about 2 s more to start): Ray Train's placement-group
    # cleaner asks its state API whether a trial's Train controller is still alive, and without
    # it leaves one idle process behind per trial a scheduler stops
    kwargs = {} if address else {"num_cpus": num_cpus}
    address = address or "local"
    try:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **kwargs)
    except ValueError as exc:
        if "runtime env" not in str(exc):
            raise
        # inside `ray job submit`: the job's runtime environment (its env_vars) already applies to
        # every worker, and Ray refuses to merge a second one; the configs carry absolute paths
        ray.init(address=address, log_to_driver=True, **kwargs)


__all__ = ["connect"]
