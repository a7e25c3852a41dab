"""``rkd report``: a paper-style comparison table from the runs of an MLflow experiment.

Every FINISHED run of the experiment (or the nested runs of one parent, e.g. a sweep) that
logged a ``results.json`` artifact becomes a row: clean accuracy, each attack, train time,
labelled by its readable label (tag ``rkd.label``, else the run name; a trial's sampled values
are in its ``rkd.sample`` tag and appended); methods first, then the other roles (teachers,
sources, MAE stages, re-evaluations), each marked ``[role]``. Runs of one label with several
seeds become one row of mean ± std over the seeds (``over_seeds``: always, never, or when any
label has several runs).
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
    """(row label, results) of every FINISHED run with ``split`` results, methods first."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a quiet report, no bars on stderr
    client = _client(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FileNotFoundError(f"no MLflow experiment named {experiment!r} at {resolve_tracking_uri(tracking_uri)}")
    query = "attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_id(client, exp, parent_run_id)}'"
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            results = _results_of(client, run, split, tmp)
            if results is not None:
                rows.append((_label_of(run, results, split), results))
    return sorted(rows, key=lambda row: row[0].endswith("]"))  # methods first, in run order


def _results_of(client, run, split: str, tmp: str) -> dict | None:
    """The run's results.json if it evaluated ``split``; None otherwise."""
    if run.data.tags.get(SPLIT_TAG, "test") != split:
        return None
    if "results.json" not in {a.path for a in client.list_artifacts(run.info.run_id)}:
        return None
    return json.loads(Path(client.download_artifacts(run.info.run_id, "results.json", tmp)).read_text())


def _label_of(run, results: dict, split: str) -> str:
    name = run.info.run_name or run.info.run_id
    if run.data.tags.get("rkd.role") != "evaluation":
        return row_label(run.data.tags, name)
    name = results.get("run", {}).get("name") or name  # `rkd eval`: the row is the model it evaluated
    return name if split != "test" else f"{name} (re-evaluation)"


#: roles whose rows are the methods compared (no ``[role]`` mark)
METHOD_ROLES = ("method", "sweep trial")


def row_label(tags: dict, run_name: str) -> str:
    """A run's row label: its ``rkd.label`` (else its name), a sweep trial's sample, and
    ``[role]`` for runs that are not methods."""
    label = tags.get("rkd.label") or run_name
    if label.startswith(f"{run_name}: "):  # rkd's default label restates the config: the name says it
        label = run_name
    sample = tags.get("rkd.sample")
    if sample and "=" not in label:
        label += " " + ", ".join(f"{k}={v}" for k, v in json.loads(sample).items())
    role = tags.get("rkd.role", "method")
    return label if role in METHOD_ROLES else f"{label} [{role}]"


def experiment_table(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                     protocols: tuple[str, ...] | None = None, over_seeds: bool | None = None, split: str = "test",
                     fmt: str = "md") -> str:
    """The experiment's table: one row per run, or (``over_seeds``; None: when a label has
    several runs) one row per label with mean ± std over its seeds
    (:func:`rkd.evaluation.seed_table.seed_grid`), of the ``split``'s results; ``fmt``: md
    (with a title line), csv, latex or json (the table alone)."""
    rows = experiment_rows(experiment, tracking_uri=tracking_uri, parent_run_id=parent_run_id, split=split)
    if not rows:
        return f"no finished runs with {split} results in experiment {experiment!r}\n"
    if over_seeds is None:
        over_seeds = len({label for label, _ in rows}) < len(rows)
    grid = seed_grid(rows, by="label") if over_seeds else comparison_grid(rows, protocols=protocols)
    if fmt != "md":
        return render(*grid, fmt)
    n = {r["num_samples"] for _, r in rows}
    images = "test images" if split == "test" else f"{split} images (held out of the training set)"
    what = "accuracy (%, mean ± sample std over seeds)" if over_seeds else "accuracy (%)"
    return f"# {experiment}: {what} on {', '.join(str(x) for x in sorted(n))} {images}\n\n" + render(*grid)
