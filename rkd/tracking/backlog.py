"""A run's tracking backlog sent to MLflow once the store is back (``rkd sync RUN_DIR``).

When the store fails mid-run, :class:`~rkd.tracking.mlflow_tracker.MlflowRun` goes on untracked
and appends every record it could not send to ``RUN_DIR/tracking_backlog.jsonl``, in order.
:func:`sync_backlog` replays them into the same MLflow run: params, per-step metrics (with
their original step and time), dataset inputs, tags, artifacts from the run directory (config.yaml, results),
and the run's end status last. The logged model is not replayed (its ``model.pt`` stays in the
run directory). The backlog is then renamed ``tracking_backlog.synced-<time>.jsonl``, so a
second sync finds nothing to send.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from rkd.tracking.mlflow_tracker import BACKLOG_FILE, _client, dataset_inputs, resolve_tracking_uri


def read_backlog(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / BACKLOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {BACKLOG_FILE}, nothing to sync (the run's tracking had no gap, "
                                "or it was synced before)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _replay(client, run_dir: Path, r: dict) -> str:
    """Send one record; returns what it was (``skipped: ...`` when it cannot be sent)."""
    from mlflow.entities import Metric, Param

    what, run_id = r["request"], r["run_id"]
    if what == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in r["params"].items()])
    elif what == "metrics":
        ms = int(r["time"] * 1000)
        points = r.get("points") or [[k, v, r["step"]] for k, v in r["metrics"].items()]  # older backlogs
        client.log_batch(run_id, metrics=[Metric(k, float(v), ms, int(step)) for k, v, step in points])
    elif what == "tag":
        for k, v in r["tags"].items():
            client.set_tag(run_id, k, v)
    elif what == "config" and (run_dir / "config.yaml").is_file():
        client.log_artifact(run_id, str(run_dir / "config.yaml"))
    elif what == "artifact" and Path(r["artifact"]).is_file():
        client.log_artifact(run_id, r["artifact"], r.get("artifact_path"))
    elif what == "datasets":
        client.log_inputs(run_id, dataset_inputs(r["datasets"]))
    elif what == "end":
        client.set_terminated(run_id, status=r["status"])
    else:
        return f"skipped: {what}"
    return what


def sync_backlog(run_dir: str | Path, tracking_uri: str | None = None) -> dict:
    """Replay ``run_dir``'s backlog into its MLflow run at ``tracking_uri`` (default: the URI in
    its run.json, else the usual resolution). Returns ``{"uri", "run_id", "sent": {kind: n},
    "skipped": {kind: n}, "kept_as": path}``; raises what the store raises (nothing is renamed
    then, and the next sync starts again: params and tags are idempotent, metrics keyed by step)."""
    run_dir = Path(run_dir)
    records = [r for r in read_backlog(run_dir) if r.get("run_id")]
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    uri = resolve_tracking_uri(tracking_uri or record.get("tracking_uri"))
    client = _client(uri)
    ends = [r for r in records if r["request"] == "end"]
    done = Counter(_replay(client, run_dir, r) for r in records if r["request"] != "end")
    done.update(_replay(client, run_dir, r) for r in ends[-1:])  # the run's end, last
    kept = run_dir / f"tracking_backlog.synced-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    (run_dir / BACKLOG_FILE).rename(kept)
    return {"uri": uri, "run_id": records[0]["run_id"] if records else None,
            "sent": {k: n for k, n in done.items() if not k.startswith("skipped")},
            "skipped": {k.removeprefix("skipped: "): n for k, n in done.items() if k.startswith("skipped")},
            "kept_as": str(kept)}
