"""``rkd report``: a paper-style comparison table from the runs of an MLflow experiment.

Every FINISHED run of the experiment (or the nested runs of one parent, e.g. a sweep) that
logged a ``results.json`` artifact becomes a row: clean accuracy, each attack, train time,
labelled by run name (a trial's sampled values are in its ``rkd.sample`` tag and appended).
``split`` chooses test results (training runs and their re-evaluations) or the evaluations on
the held-out validation split (``rkd eval RUN --split validation``, tag ``rkd.evaluated_split``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rkd.evaluation.results import comparison_grid
from rkd.evaluation.seed_table import seed_grid
from rkd.evaluation.table_formats import render
from rkd.tracking.mlflow_tracker import PARENT_TAG, _client, resolve_tracking_uri

SPLIT_TAG = "rkd.evaluated_split"


def parent_id(client, exp, parent: str) -> str:
    """A parent run given by its id or by its name in the experiment; a clear error if neither."""
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{parent}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        return runs[0].info.run_id  # the newest run of that name (e.g. "quickstart")
    try:
        run = client.get_run(parent)
    except Exception:  # noqa: BLE001 -- MLflow raises its own error for an unknown id
        run = None
    if run is None or run.info.experiment_id != exp.experiment_id:
        raise FileNotFoundError(f"--parent {parent}: no run of that id or name in experiment {exp.name!r}")
    return run.info.run_id


def experiment_rows(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                    split: str = "test") -> list[tuple[str, dict]]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a quiet report, no bars on stderr
    client = _client(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FileNotFoundError(f"no MLflow experiment named {experiment!r} at {resolve_tracking_uri(tracking_uri)}")
    if parent_run_id:
        parent_run_id = parent_id(client, exp, parent_run_id)
    query = "attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    rows = []
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            if run.data.tags.get(SPLIT_TAG, "test") != split:
                continue
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            if "results.json" not in names:
                continue
            path = client.download_artifacts(run.info.run_id, "results.json", tmp)
            results = json.loads(Path(path).read_text())
            label = run.info.run_name or run.info.run_id
            sample = run.data.tags.get("rkd.sample")
            if sample:
                label += " " + ", ".join(f"{k}={v}" for k, v in json.loads(sample).items())
            rows.append((label, results))
    return rows


def experiment_table(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                     protocols: tuple[str, ...] | None = None, over_seeds: bool = False, split: str = "test",
                     fmt: str = "md") -> str:
    """The experiment's table: one row per run, or (``over_seeds``) one row per configuration
    with mean ± std over its seeds (:func:`rkd.evaluation.seed_table.seed_grid`), of the
    ``split``'s results; ``fmt``: md (with a title line), csv, latex or json (the table alone)."""
    rows = experiment_rows(experiment, tracking_uri=tracking_uri, parent_run_id=parent_run_id, split=split)
    if not rows:
        return f"no finished runs with {split} results in experiment {experiment!r}\n"
    grid = seed_grid(rows) if over_seeds else comparison_grid(rows, protocols=protocols)
    if fmt != "md":
        return render(*grid, fmt)
    n = {r["num_samples"] for _, r in rows}
    images = "test images" if split == "test" else f"{split} images (held out of the training set)"
    what = "accuracy (%, mean ± sample std over seeds)" if over_seeds else "accuracy (%)"
    return f"# {experiment}: {what} on {', '.join(str(x) for x in sorted(n))} {images}\n\n" + render(*grid)
