"""Reproduce a paper table: run every config of a table's folder (or listed files) in order,
each through `rkd train` (teachers and caches are shared), then print the comparison table of
their MLflow experiment.

    ray job submit --working-dir . -- python jobs/reproduce.py jobs/macd/cifar10_resnet50 --experiment macd-cifar10
    python jobs/reproduce.py jobs/digits/macd/table6 --experiment digits-macd-table6
    python jobs/reproduce.py jobs/digits/table1 --experiment rkd-digits-table1 --seeds 0 1 2

With ``--seeds`` every config runs once per seed (``seed=N``) and the table gives each
configuration's mean ± sample std over them.
"""

import argparse
from pathlib import Path

import _common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="config files or folders of them")
    ap.add_argument("--experiment", required=True, help="MLflow experiment to tabulate afterwards")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                    help="run every config once per seed; the table gives mean ± std over them")
    ap.add_argument("--smoke", action="store_true", help="each run's whole chain, a few steps each; no table")
    args = ap.parse_args()
    from rkd.cli import main as cli
    from rkd.config import load_config

    files = []
    for p in map(Path, args.paths):
        files += sorted(q for q in p.glob("*.yaml") if q.name != "base.yaml") if p.is_dir() else [p]
    seeds = [[f"seed={s}"] for s in args.seeds] if args.seeds else [[]]
    for f in files:  # validate all before running any
        load_config(str(f), args.set)
    for seed in seeds:
        for f in files:
            rc = cli(["train", str(f), *args.set, *seed, *(["--smoke"] if args.smoke else [])])
            if rc:
                return rc
    report = ["report", "--experiment", args.experiment, *(["--over-seeds"] if args.seeds else [])]
    return 0 if args.smoke else cli(report)


if __name__ == "__main__":
    _common.run(main)
