"""Two costs of running experiments through Ray, printed side by side in one run:

1. Per-trial overhead of a Tune launch: the same K small trials (digits preset, in-process
   trials, ``scaling.num_workers: 0``) run (a) one after another in this process with
   :func:`rkd.experiment.run_experiment`, (b) as one sweep (:func:`rkd.orchestration.tune.run_sweep`,
   ``max_concurrent_trials`` 1 so both do the same work serially), (c) as one sweep whose trials
   each launch a one-worker TorchTrainer (``scaling.num_workers: 1``: Train controller, worker
   group, checkpoints through Ray Train). Overhead per trial = (b - a) / K, (c - a) / K; the
   local cluster's start is timed separately. What a TorchTrainer costs by itself is timed with
   an empty training function (one worker that only reports once): when its worker started
   running, and when ``fit()`` returned.
2. Memory of K concurrent readers of the one-time adversarial set: a float32 array of the size
   of the set (``--set-mb``) is put in the object store once; K actors (a) map it from the object
   store (what trials do) or (b) receive their own copy; each reports its unique memory (USS,
   pages only it holds). With the object store the K readers together stay near one copy.

    python benchmarks/bench_tune_overhead.py --trials 4 --readers 4 --set-mb 256
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def overhead(k: int, epochs: int) -> dict:
    import ray

    from rkd.config import load_config
    from rkd.experiment import run_experiment
    from rkd.orchestration.tune import run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="rkd-bench-"))
    over = [f"output_dir={tmp / 'runs'}", "tracking.enabled=false", f"train.epochs={epochs}", "train.warmup_epochs=0",
            "train.progress=none", "eval.attacks=[{kind: fgsm, eps: 8/255}]"]
    lrs = [0.01 * (i + 1) for i in range(k)]
    t0 = time.perf_counter()
    for lr in lrs:
        run_experiment(load_config("preset:digits_standard", over + [f"train.lr={lr}", "eval.jsma=null",
                                                                     "eval.input_gradient=false"]))
    local = time.perf_counter() - t0
    base = tmp / "base.yaml"
    base.write_text("base: preset:digits_standard\neval: {jsma: null, input_gradient: false}\n")
    spaces = {}
    for name, extra in (("tune", []), ("tune_train", ["scaling.num_workers=1"])):
        spaces[name] = tmp / f"{name}.yaml"
        spaces[name].write_text(f"base: base.yaml\noverrides: {json.dumps(over + extra)}\nmetric: clean\n"
                                "scheduler: {name: fifo}\nsearcher: grid\n"
                                f"params: {{train.lr: {{grid: {json.dumps(lrs)}}}}}\n")
    t0 = time.perf_counter()
    from rkd.orchestration import connect

    connect(num_cpus=os.cpu_count(), tracking_uri="sqlite:///" + str(tmp / "mlflow.db"))  # what `rkd tune` starts
    out = {"local": local, "start": time.perf_counter() - t0, "k": k}
    for name, space in spaces.items():
        t0 = time.perf_counter()
        summary = run_sweep(space, name=f"bench-{name}", max_concurrent_trials=1)
        out[name] = time.perf_counter() - t0
        assert all(t["metrics"].get("finished") == 1 for t in summary["trials"]), summary["trials"]
    out["empty_fit"], out["empty_worker_up"] = empty_fit(tmp)
    ray.shutdown()
    return out


def _note_start(config):
    Path(config["mark"]).write_text(str(time.time() - config["t0"]))


def empty_fit(tmp: Path) -> tuple[float, float]:
    """A TorchTrainer (1 worker) whose function only notes when it started: (fit s, start s)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    mark = tmp / "empty_started"
    t0 = time.time()
    TorchTrainer(_note_start, train_loop_config={"t0": t0, "mark": str(mark)},
                 scaling_config=ScalingConfig(num_workers=1),
                 run_config=RunConfig(name="empty", storage_path=str(tmp / "empty"))).fit()
    return time.time() - t0, float(mark.read_text())


def uss_bytes() -> int:
    """Unique set size of this process (Linux): its private pages, from /proc/self/smaps_rollup."""
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def memory(readers: int, set_mb: int) -> dict:
    import ray

    ray.init(address="local", num_cpus=max(2, readers), include_dashboard=False, log_to_driver=False,
             object_store_memory=max(set_mb * 3, 256) * 2**20)

    @ray.remote(num_cpus=0)
    class Reader:
        def read(self, arr, copy: bool = False):
            arr = np.array(arr) if copy else np.asarray(arr)  # a private copy, or the shared read-only view
            total = float(arr.sum(dtype=np.float64))  # touch every page
            self.keep = arr  # hold it while measuring
            return uss_bytes(), total

    n = set_mb * 2**20 // 4
    data = np.random.default_rng(0).random(n, dtype=np.float32)
    ref = ray.put(data)
    out = {}
    for mode in ("object store", "own copy"):
        actors = [Reader.remote() for _ in range(readers)]
        idle = ray.get([a.read.remote(np.zeros(1, np.float32)) for a in actors])
        res = ray.get([a.read.remote(ref, copy=mode == "own copy") for a in actors])
        out[mode] = sum(r[0] - i[0] for r, i in zip(res, idle)) / 2**20
        for a in actors:
            ray.kill(a)
    ray.shutdown()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--set-mb", type=int, default=256, help="size of the shared array (CIFAR-10's set: 614 MB)")
    args = ap.parse_args(argv)
    o = overhead(args.trials, args.epochs)
    m = memory(args.readers, args.set_mb)
    print(f"{args.trials} trials of preset:digits_standard ({args.epochs} epochs, FGSM eval), one at a time:")
    print(f"  in-process loop      {o['local']:8.1f} s   {o['local'] / o['k']:6.1f} s/trial   1.00x")
    for key, label in (("tune", "Tune sweep"), ("tune_train", "Tune + TorchTrainer")):
        print(f"  {label:<20} {o[key]:8.1f} s   {o[key] / o['k']:6.1f} s/trial   {o[key] / o['local']:.2f}x"
              f"   (+{(o[key] - o['local']) / o['k']:.1f} s per trial)")
    print(f"  (starting the local cluster: {o['start']:.1f} s more, once; an empty TorchTrainer.fit() "
          f"{o['empty_fit']:.1f} s, its worker running after {o['empty_worker_up']:.1f} s)")
    print(f"{args.readers} concurrent readers of a {args.set_mb} MB float32 set (one copy in the object store), "
          f"memory unique to the readers (sum of USS):")
    for k, v in m.items():
        print(f"  {k:<20} {v:8.1f} MB   {v / args.set_mb:5.2f} copies")


if __name__ == "__main__":
    main()
