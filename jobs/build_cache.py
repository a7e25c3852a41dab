"""Build (once) the one-time adversarial set of a MACD config: train its source model if it is
not cached yet, run PGD over the training set and store it in the content-addressed cache.
Later MACD runs and sweeps with the same source, attack, data and seed read it from there.

    ray job submit --working-dir . -- python jobs/build_cache.py jobs/macd/cifar10_resnet50/macd.yaml
"""

import argparse

import _common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a macd experiment config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from rkd.config import load_config
    from rkd.experiment import build_datasets, macd_adversarial_set, resolve_device
    from rkd.teachers import load_teacher

    cfg = load_config(args.config, args.overrides)
    if cfg.method.name != "macd":
        raise SystemExit(f"{args.config}: method {cfg.method.name} has no one-time adversarial set (macd only)")
    device = resolve_device(cfg.device)
    source, run = load_teacher(cfg.method.source, device, tracking=cfg.tracking, output_dir=cfg.output_dir)
    train_set, _, _ = build_datasets(cfg.data)
    adv, key = macd_adversarial_set(cfg, train_set, source, device, return_key=True)
    print(f"source {run.run_dir}; {adv.shape[0]} examples in {cfg.method.cache_dir}/{key}")
    return 0


if __name__ == "__main__":
    _common.run(main)
