"""MACD's cost: one distillation epoch vs a standard epoch vs a PGD-7 adversarial-training epoch,
and the one-time adversarial set, all on the same student, data and machine, in one run.

The MACD paper's claim (its per-epoch table): 2.72 min per MACD epoch against 25.63 for AT,
i.e. AT / MACD ~ 9.4x, because MACD's adversarial examples are made once (PGD-40 against the
standard model) and reused, where AT runs PGD every step. Our target: a MACD epoch <= 2x a
standard epoch. MACD pays one frozen-teacher forward per step (the MAE encoder, twice: masked
and whole image) on top of a standard step; the set costs 40 forward+backward passes per image,
once.

Each epoch kind is run ``--rounds`` times round-robin through the real :class:`rkd.engine.Trainer`
(``train_one_epoch``) and the median is reported. Random weights (cost does not depend on them).

    python benchmarks/bench_macd_epoch.py                       # digits- (718 images), CPU
    python benchmarks/bench_macd_epoch.py --device cuda --arch tv_resnet50 --input-size 224 \\
        --teacher mae_vit_base_patch16 --dataset cifar10 --root data --limit 5000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rkd.adversarial_cache import build_adversarial_set
from rkd.config import load_config
from rkd.config.schema import TrainAttackConfig
from rkd.data import paired_dataset
from rkd.engine import Trainer
from rkd.experiment import build_datasets, build_model
from rkd.methods import AdversarialTraining, Macd, StandardTraining, freeze
from rkd.models import create_model, set_input_size


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="preset:digits_macd", help="data and student come from this config")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--root", default=None)
    ap.add_argument("--limit", type=int, default=None, help="limit the training set")
    ap.add_argument("--arch", default=None, help="student arch (default: the preset's)")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--teacher", default="mae_vit_tiny")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    overrides = ["tracking.enabled=false", "train.warmup_epochs=0", "train.epochs=1", "train.eval_every=0",
                 "train.progress=none"]
    if args.dataset:
        overrides += [f"data.dataset={args.dataset}", "data.half=null"]
    if args.root:
        overrides.append(f"data.root={args.root}")
    if args.limit:
        overrides.append(f"data.limit_train={args.limit}")
    if args.batch:
        overrides.append(f"data.batch_size={args.batch}")
    if args.arch:
        overrides.append(f"model={{arch: {args.arch}}}")
    if args.input_size:
        overrides.append(f"model.input_size={args.input_size}")
    cfg = load_config(args.preset, overrides)
    m = cfg.method
    train_set, _, _ = build_datasets(cfg.data)
    torch.manual_seed(0)
    source = build_model(cfg).to(device).eval()
    teacher_kw = {"img_size": args.input_size} if args.input_size and args.teacher == "mae_vit_tiny" else {}
    teacher = create_model(args.teacher, mean=cfg.data.dataset, **teacher_kw)
    if args.input_size:
        set_input_size(teacher, args.input_size)
    teacher = freeze(teacher.to(device))

    sync(device)
    t0 = time.perf_counter()
    adv, _ = build_adversarial_set(source, train_set, m.attack.attack_params(), seed=0,
                                   batch_size=cfg.data.eval_batch_size, device=device)
    sync(device)
    cache_s = time.perf_counter() - t0
    paired = paired_dataset(train_set.with_transform(None), adv).with_transform(train_set.transform)

    def trainer(kind):
        torch.manual_seed(0)
        model = build_model(cfg)
        if kind == "standard":
            meth, data = StandardTraining(model), train_set
        elif kind == "adversarial (PGD-7)":
            meth, data = AdversarialTraining(model, TrainAttackConfig(norm="linf", eps=8 / 255, steps=7)), train_set
        else:
            meth, data = Macd(model, teacher, teacher_mask_ratio=m.teacher_mask_ratio, student_patch=m.student_patch,
                              student_mask_ratio=m.student_mask_ratio), paired
        return Trainer(meth, data, cfg.train, batch_size=cfg.data.batch_size, device=device)

    kinds = ["standard", "MACD", "adversarial (PGD-7)"]
    trainers = {k: trainer(k) for k in kinds}
    for t in trainers.values():  # warm-up epoch (allocator, kernels)
        t.train_one_epoch(0)
    times = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds:
            sync(device)
            t0 = time.perf_counter()
            trainers[k].train_one_epoch(r + 1)
            sync(device)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["standard"]
    print(f"device {device}, student {cfg.model.arch} (input {cfg.model.input_size or 'native'}), teacher "
          f"{args.teacher}, {len(train_set)} training images, batch {cfg.data.batch_size}, "
          f"median of {args.rounds} epochs")
    print(f"{'epoch':<24}{'seconds':>10}{'x standard':>12}")
    for k in kinds:
        print(f"{k:<24}{med[k]:>10.2f}{med[k] / base:>11.2f}x")
    print(f"{'one-time PGD-40 set':<24}{cache_s:>10.2f}{cache_s / base:>11.2f}x  (once, then read from the cache)")
    print(f"AT epoch / MACD epoch: {med['adversarial (PGD-7)'] / med['MACD']:.2f}x (paper: 25.63 / 2.72 = 9.42x); "
          f"MACD epoch / standard: {med['MACD'] / base:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
