"""Batched fetching (rkd.data.loader.make_loader) vs the per-item DataLoader path.

Same dataset (digits 32x32x3, or a CIFAR-sized random uint8 set), same batch size, same
augmentation (random crop 4 + flip), one epoch each, best of --repeats. Prints seconds per
epoch and the ratio per-item / batched.

    python benchmarks/bench_data_loading.py [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from rkd.data import TensorImageDataset, build_dataset, train_transform
from rkd.data.loader import make_loader


def epoch_time(loader, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in loader:
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    sets = {
        "digits (1437 x 3x32x32 float)": build_dataset("digits", train=True),
        "cifar-sized (10000 x 3x32x32 uint8)": TensorImageDataset(
            torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (10000,))),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"best of {args.repeats}")
    print(f"{'dataset':40s} {'per-item s':>11s} {'batched s':>10s} {'ratio':>7s}")
    for name, ds in sets.items():
        ds = ds.with_transform(train_transform(flip=True))
        per_item = DataLoader(ds, batch_size=args.batch_size, shuffle=True)
        batched = make_loader(ds, args.batch_size, shuffle=True)
        a, b = epoch_time(per_item, args.repeats), epoch_time(batched, args.repeats)
        print(f"{name:40s} {a:11.3f} {b:10.3f} {a / b:6.1f}x")


if __name__ == "__main__":
    main()
