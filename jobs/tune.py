"""Run (or resume) a hyperparameter sweep of a tune space on the Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py tune_spaces/robust_kd.yaml [--resume] [--name NAME]
"""

import argparse

import _common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("space")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="the trials' chain once, a few steps each (rkd tune --smoke)")
    args = ap.parse_args()
    from rkd.cli import main as cli

    extra = (["--resume"] if args.resume else []) + (["--name", args.name] if args.name else []) + (
        ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []) + (
        ["--smoke"] if args.smoke else [])
    return cli(["tune", args.space, *extra])


if __name__ == "__main__":
    _common.run(main)
