"""``results.json``: the one machine-readable result of a run, and its markdown tables.

Schema ``rkd.results/1``::

    {
      "schema": "rkd.results/1",
      "run":   {"name", "method", "arch", "dataset", "run_dir", "mlflow_run_id"},
      "num_samples": int,                 # test images evaluated (first N of the test set)
      "clean_accuracy": float,            # in [0, 1]
      "attacks": [                        # one per attack, in config order
        {"name": "PGD-7 Linf 8/255", "kind": "pgd", "norm": "linf"|"l2", "eps": float,
         "eps_label": "8/255", "steps": int|null, "step_size": float|null (the step actually
         used: FGSM eps, MI-FGSM eps/steps, PGD 2.5*eps/steps unless set), "restarts": int|null,
         "protocol": "white-box"|"transfer", "source_model": str|null (transfer: the model the
         attack ran on), "accuracy": float (correct on the clean AND the attacked image),
         "wall_time_s": float, "params": {every parameter the attack ran with}}
      ],
      "step_sweep": null | {"norm", "eps", "eps_label",
                            "points": [{"steps", "step_size", "accuracy", "wall_time_s"}]},
      "train_wall_time_s": float|null,    # training time of this run (resumes included)
      "eval_wall_time_s": float,
      "created": ISO-8601 UTC time
    }
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

SCHEMA = "rkd.results/1"


def make_results(body: dict, *, run: dict, train_wall_time_s: float | None) -> dict:
    return {"schema": SCHEMA, "run": run, **body, "train_wall_time_s": train_wall_time_s,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_results(results: dict, directory: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "results.json"
    js.write_text(json.dumps(results, indent=2))
    md = directory / "results.md"
    md.write_text(results_markdown(results))
    return js, md


def read_results(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an rkd results file (schema {data.get('schema')!r})")
    return data


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _time(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table, one row per (label, results): clean, every attack, train time.

    Columns are the union of attack names in first-seen order, labelled with their protocol
    when more than one protocol appears.
    """
    protocols = {a["protocol"] for _, r in rows for a in r["attacks"]}
    cols: list[tuple[str, str]] = []
    for _, r in rows:
        for a in r["attacks"]:
            key = (a["name"], a["protocol"])
            if key not in cols:
                cols.append(key)
    head = ["method", "clean"] + [n if len(protocols) == 1 else f"{n} ({p})" for n, p in cols] + ["train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows:
        acc = {(a["name"], a["protocol"]): a["accuracy"] for a in r["attacks"]}
        cells = [label, _pct(r["clean_accuracy"])] + [_pct(acc.get(c)) for c in cols] + [_time(r.get("train_wall_time_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: dict) -> str:
    run = results.get("run", {})
    title = run.get("name") or "results"
    out = [f"# {title}", "", f"Accuracy (%) on {results['num_samples']} test images.", "",
           comparison_table([(run.get("method", title), results)])]
    sweep = results.get("step_sweep")
    if sweep:
        out += ["", f"PGD {sweep['norm']} eps {sweep['eps_label']}: accuracy vs steps", "",
                "| steps | " + " | ".join(str(p["steps"]) for p in sweep["points"]) + " |",
                "|---|" + "---|" * len(sweep["points"]),
                "| accuracy | " + " | ".join(_pct(p["accuracy"]) for p in sweep["points"]) + " |", ""]
    return "\n".join(out)
