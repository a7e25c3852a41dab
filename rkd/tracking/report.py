"""``rkd report``: a paper-style comparison table from the runs of an MLflow experiment.

Every FINISHED run of the experiment (or the nested runs of one parent, e.g. a sweep) that
logged a ``results.json`` artifact becomes a row: clean accuracy, each attack, train time,
labelled by run name (a trial's sampled values are in its ``rkd.sample`` tag and appended).
``split`` chooses test results (training runs and their re-evaluations) or the evaluations on
the held-out validation split (``rkd eval RUN --split validation``, tag ``rkd.evaluated_split``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rkd.evaluation.results import comparison_table
from rkd.evaluation.seed_table import seed_table
from rkd.tracking.mlflow_tracker import PARENT_TAG, _client, resolve_tracking_uri

SPLIT_TAG = "rkd.evaluated_split"


def experiment_rows(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                    split: str = "test") -> list[tuple[str, dict]]:
    client = _client(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FileNotFoundError(f"no MLflow experiment named {experiment!r} at {resolve_tracking_uri(tracking_uri)}")
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
                     protocols: tuple[str, ...] | None = None, over_seeds: bool = False, split: str = "test") -> str:
    """The experiment's table: one row per run, or (``over_seeds``) one row per configuration
    with mean ± std over its seeds (:func:`rkd.evaluation.seed_table.seed_table`), of the
    ``split``'s results."""
    rows = experiment_rows(experiment, tracking_uri=tracking_uri, parent_run_id=parent_run_id, split=split)
    if not rows:
        return f"no finished runs with {split} results in experiment {experiment!r}\n"
    n = {r["num_samples"] for _, r in rows}
    images = "test images" if split == "test" else f"{split} images (held out of the training set)"
    head = f"# {experiment}: accuracy (%) on {', '.join(str(x) for x in sorted(n))} {images}\n\n"
    if over_seeds:
        return head.replace("accuracy (%)", "accuracy (%, mean ± sample std over seeds)") + seed_table(rows)
    return head + comparison_table(rows, protocols=protocols)
