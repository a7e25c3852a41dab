"""The main job: offline, on CPU, a few minutes — every method on the same digits data.

Trains each method of :data:`QUICKSTART_METHODS` on scikit-learn's digits (32x32x3), evaluates
each on the Robust-KD grid, prints one comparison table with the training wall time of each
method, and logs everything to MLflow: one parent run ``quickstart`` with one nested run per
method. Later methods (Robust-KD, MACD, ...) add rows here.
"""

from __future__ import annotations

import json
import sys
from typing import Iterable

from rkd.config import TrackingConfig, load_config
from rkd.evaluation import comparison_table
from rkd.experiment import run_experiment, unique_dir
from rkd.tracking import MlflowRun, resolve_tracking_uri

#: (table label, preset) in table order
QUICKSTART_METHODS: list[tuple[str, str]] = [
    ("standard training", "preset:digits_standard"),
    ("adversarial training (PGD-7 Linf 8/255)", "preset:digits_adversarial"),
    ("TRADES (beta 6, PGD-7 Linf 8/255)", "preset:digits_trades"),
]


def _key(preset: str) -> str:
    return preset.split("_", 1)[-1]


def _split_override(item: str) -> tuple[str | None, str]:
    """``"adversarial:a.b=1"`` -> ``("adversarial", "a.b=1")``; ``"a.b=1"`` -> ``(None, "a.b=1")``."""
    key = item.split("=", 1)[0]
    if ":" in key:
        target, rest = item.split(":", 1)
        return target, rest
    return None, item


def method_keys() -> list[str]:
    """Short names of the quickstart methods (``standard``, ``adversarial``, ...)."""
    return [_key(p) for _, p in QUICKSTART_METHODS]


def run_quickstart(overrides: Iterable[str] = (), output_dir: str = "runs", only: Iterable[str] | None = None,
                   out=sys.stdout) -> dict:
    """Run the quickstart.

    ``overrides`` are ``key=value`` for every method, or ``METHOD:key=value`` for one (METHOD as
    in :func:`method_keys`, e.g. ``adversarial:method.attack.steps=3``). Every config is loaded
    and validated before the first run starts.
    """
    keys = method_keys()
    targeted = [_split_override(o) for o in overrides]  # (method or None, key=value)
    for (target, _), o in zip(targeted, overrides):
        if target is not None and target not in keys:
            raise ValueError(f"override {o!r}: unknown quickstart method {target!r}; choose from {keys}")
    chosen = [(label, preset) for label, preset in QUICKSTART_METHODS if only is None or _key(preset) in set(only)]
    if not chosen:
        raise ValueError(f"no quickstart method matches {list(only or [])}; choose from {keys}")
    configs = []
    for label, preset in chosen:
        mine = [o for target, o in targeted if target in (None, _key(preset))]
        configs.append((label, load_config(preset, mine + [f"output_dir={output_dir}"])))
    qdir = unique_dir(output_dir, "quickstart")
    tracking: TrackingConfig = configs[0][1].tracking

    rows, runs = [], []
    with MlflowRun(tracking, run_name="quickstart", tags={"rkd.kind": "quickstart"}) as parent:
        for label, cfg in configs:
            print(f"== {label}: {cfg.name}", file=out, flush=True)
            result = run_experiment(cfg, run_dir=qdir / cfg.name, parent_run_id=parent.run_id)
            rows.append((label, result.results))
            runs.append({"label": label, "name": cfg.name, "run_dir": str(result.run_dir),
                         "mlflow_run_id": result.mlflow_run_id, "results": result.results})
        table = comparison_table(rows)
        n = rows[0][1]["num_samples"]
        summary_md = (f"# rkd quickstart\n\nAccuracy (%) on the {n} digits test images, white-box attacks "
                      f"(FGSM, PGD-7); train time = wall time of training on this machine.\n\n{table}")
        (qdir / "summary.md").write_text(summary_md)
        (qdir / "summary.json").write_text(json.dumps({"runs": runs}, indent=1))
        parent.log_artifact(qdir / "summary.md")
        parent.log_artifact(qdir / "summary.json")

    print("\n" + summary_md, file=out)
    if tracking.enabled:
        uri = resolve_tracking_uri(tracking.tracking_uri)
        print(f"Runs are in MLflow ({uri}), experiment '{tracking.experiment}'. Browse them with:\n"
              f"    mlflow ui --backend-store-uri {uri}\n"
              f"and open http://127.0.0.1:5000", file=out)
    print(f"Run directories: {qdir}", file=out)
    return {"dir": str(qdir), "table": table, "runs": runs}
