"""A small table run sequentially (as ``jobs/reproduce.py --sequential``: one row after another in
one process, each row training its missing teacher first) against the same table as one graph
(``rkd.orchestration.table.run_table``) on a local two-node Ray cluster whose head offers no
trainer resource -- the cluster of tests/test_table.py.

The table: a defensive-distillation teacher shared by two students, and two independent standard
rows; synthetic 32x32 data, a width-8 ResNet-18, every row asking for one 'trainer' unit (the
worker node offers ``--units``). Each mode starts from empty folders, so both train everything;
the cluster's start is timed apart.

    python benchmarks/bench_table_graph.py              # ~3 min on 2 CPU cores
    python benchmarks/bench_table_graph.py --epochs 8   # more work per row
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def table(root: Path, epochs: int) -> dict:
    from rkd.config import load_config
    from rkd.config.schema import TeacherConfig

    common = ["device=cpu", "data.dataset=synthetic", "data.limit_train=256", "data.limit_test=64",
              "data.batch_size=32", "data.half=null", "model.arch=resnet18", "model.width=8", "model.layers=[1,1,1,1]",
              f"train.epochs={epochs}", "train.warmup_epochs=0", "train.progress=none", "eval.max_samples=64",
              "eval.attacks=[{kind: fgsm, eps: 8/255}]", "eval.jsma=null", "eval.checks.enabled=false",
              "eval.worst_case.suite=fast", "eval.worst_case.threats=[{norm: linf, eps: 8/255}]",
              "scaling.resources_per_worker={trainer: 1}", f"output_dir={root / 'runs'}",
              f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", "tracking.log_model=false"]
    teacher = TeacherConfig(config="preset:digits_dd_teacher", cache_dir=str(root / "teachers"),
                            overrides=[*common, "eval.enabled=false"])
    rows = {}
    for name, preset, extra in (("student-a", "preset:digits_defensive_distillation", []),
                                ("student-b", "preset:digits_defensive_distillation", ["seed=1"]),
                                ("standard-a", "preset:digits_standard", []),
                                ("standard-b", "preset:digits_standard", ["seed=1"])):
        cfg = load_config(preset, [*common, f"name={name}", *extra])
        if name.startswith("student"):
            cfg = cfg.model_copy(update={"method": cfg.method.model_copy(update={"teacher": teacher})})
        rows[name] = (cfg, root / "rows" / name)
    return rows


def sequential(rows: dict) -> float:
    from rkd.orchestration.table import run_row

    t0 = time.perf_counter()
    for name, (cfg, run_dir) in rows.items():
        run_row(cfg, run_dir, {"rkd.row": name})
    return time.perf_counter() - t0


def graph(rows: dict, units: int) -> tuple[float, float]:
    import ray
    from ray.cluster_utils import Cluster

    from rkd.orchestration.table import run_table

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=units, resources={"trainer": units})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}})
    start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        out = run_table(rows)
        wall = time.perf_counter() - t0
        failed = [n for n, o in out.items() if o.error]
        if failed:
            raise SystemExit(f"rows failed: {failed}")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return wall, start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--units", type=int, default=4, help="'trainer' units (concurrent rows) of the worker node")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        seq = sequential(table(Path(a), args.epochs))
        par, start = graph(table(Path(b), args.epochs), args.units)
    print(f"table: 1 teacher shared by 2 students + 2 independent rows, {args.epochs} epochs each, "
          f"{os.cpu_count()} CPU cores")
    print(f"sequential (reproduce.py --sequential): {seq:7.1f} s")
    print(f"one graph on the cluster ({args.units} units): {par:7.1f} s   (cluster start {start:.1f} s, not counted)")
    print(f"graph / sequential: {par / seq:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
