"""Reproduce a paper table: run every config of a table's folder (or listed files) in order,
each through `rkd train` (teachers and caches are shared), then print the comparison table of
their MLflow experiment.

    ray job submit --working-dir . -- python jobs/reproduce.py jobs/macd/cifar10_resnet50 --experiment macd-cifar10
    python jobs/reproduce.py jobs/digits/macd/table6 --experiment digits-macd-table6
    python jobs/reproduce.py jobs/digits/table1 --experiment rkd-digits-table1 --seeds 0 1 2
    python jobs/reproduce.py jobs/digits/macd_fidelity --experiment rkd-digits-macd-fidelity --seeds 0 1 2 --validation

Each run has a fixed directory, ``<output_dir>/reproduce/<name>[-seed<N>]``: running the same
command again reuses every run that finished (its results.json is there) and resumes one that
was interrupted (one stopped before its first checkpoint is set aside and trained again), so a
stopped table continues where it stopped. With ``--seeds`` every config
runs once per seed (``seed=N``) and the table gives each configuration's mean ± sample std over
them. With ``--validation`` every run is also evaluated on the validation split it held out
(``rkd eval RUN --split validation``; the configs must set ``data.val_size``) and that table is
printed too: the one to choose options on.
"""

import argparse
import time
from pathlib import Path

import _common


def run_dir_of(cfg, seed: int | None) -> Path:
    return Path(cfg.output_dir) / "reproduce" / (cfg.name if seed is None else f"{cfg.name}-seed{seed}")


def train(cli, config: str, run_dir: Path, overrides: list[str]) -> int:
    """Train one row unless it finished before; resume it when it was interrupted."""
    if (run_dir / "results.json").is_file():
        print(f"reproduce: {run_dir} finished before; reused")
        return 0
    if (run_dir / "config.yaml").is_file():
        if any((run_dir / "checkpoints").glob("epoch_*.pt")):
            print(f"reproduce: {run_dir} was interrupted; resuming it")
            return cli(["train", "--resume", str(run_dir)])
        kept = run_dir.with_name(f"{run_dir.name}.stopped-{time.strftime('%Y%m%dT%H%M%S')}")
        run_dir.rename(kept)  # stopped before its first checkpoint: start again, keep what it left
        print(f"reproduce: {run_dir} stopped before its first checkpoint; kept as {kept.name}, training again")
    return cli(["train", config, *overrides, "--run-dir", str(run_dir)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="config files or folders of them")
    ap.add_argument("--experiment", required=True, help="MLflow experiment to tabulate afterwards")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                    help="run every config once per seed; the table gives mean ± std over them")
    ap.add_argument("--validation", nargs="*", default=None, metavar="KEY=VALUE",
                    help="also evaluate every run on its validation split (eval.* overrides for that "
                         "evaluation may follow) and print that table")
    ap.add_argument("--smoke", action="store_true", help="each run's whole chain, a few steps each; no table")
    args = ap.parse_args()
    from rkd.cli import main as cli
    from rkd.config import load_config

    files = []
    for p in map(Path, args.paths):
        files += sorted(q for q in p.glob("*.yaml") if q.name != "base.yaml") if p.is_dir() else [p]
    seeds = args.seeds or [None]
    configs = {f: load_config(str(f), args.set) for f in files}  # validate all before running any
    if args.validation is not None:
        missing = [str(f) for f, c in configs.items() if not c.data.val_size]
        if missing:
            raise SystemExit(f"reproduce --validation: no validation split (data.val_size) in {', '.join(missing)}")
    if args.smoke:
        for f in files:
            rc = cli(["train", str(f), *args.set, "--smoke"])
            if rc:
                return rc
        return 0
    for seed in seeds:
        extra = [] if seed is None else [f"seed={seed}"]
        for f, cfg in configs.items():
            run_dir = run_dir_of(cfg, seed)
            rc = train(cli, str(f), run_dir, [*args.set, *extra])
            if rc:
                return rc
            if args.validation is not None and not (run_dir / "validation" / "results.json").is_file():
                rc = cli(["eval", str(run_dir), *args.validation, "--split", "validation"])
                if rc:
                    return rc
    over = ["--over-seeds"] if args.seeds else []
    rc = cli(["report", "--experiment", args.experiment, *over])
    if rc or args.validation is None:
        return rc
    return cli(["report", "--experiment", args.experiment, *over, "--split", "validation"])


if __name__ == "__main__":
    _common.run(main)
