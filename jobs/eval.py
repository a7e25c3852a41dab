"""Evaluate a finished run directory again (another grid, the transfer protocol, ...).

    ray job submit --working-dir . -- python jobs/eval.py runs/cifar10-macd-... eval.max_samples=1000
"""

import argparse

import _common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from rkd.cli import main as cli

    return cli(["eval", args.run_dir, *args.overrides])


if __name__ == "__main__":
    _common.run(main)
