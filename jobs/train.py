"""Train (and evaluate) one configured run, on Ray Train when ``scaling.num_workers > 0``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py jobs/cifar10/robust_kd.yaml scaling.num_workers=4 scaling.use_gpu=true
"""

import argparse

import _common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--smoke", action="store_true", help="the whole chain, a few steps each (rkd train --smoke)")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--workers", type=int, default=None, help="= scaling.num_workers")
    w.add_argument("--local", action="store_const", const=0, dest="workers", help="in-process (= --workers 0)")
    args = ap.parse_args()
    from rkd.cli import main as cli

    extra = ["--workers", str(args.workers)] if args.workers is not None else []
    extra += ["--smoke"] if args.smoke else []
    return cli(["train", args.config, *args.overrides, *extra])


if __name__ == "__main__":
    _common.run(main)
