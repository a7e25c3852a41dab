"""Channels-last vs the default (NCHW) layout for rkd's convolutional networks.

rkd's ResNets and Wide ResNets keep weights and activations channels-last
(:mod:`rkd.models.memory_format`). This times, interleaved in one run, the two passes that
dominate rkd's wall time -- a training step's forward + backward (batch ``--train-batch``) and an
attack step's input gradient in eval mode (batch ``--eval-batch``) -- with the model as rkd
builds it and with the same weights converted back to NCHW (the stem's conversion switched off
for that variant), and prints the median milliseconds and the speed ratio.

    python benchmarks/bench_memory_format.py [--arch resnet18] [--width 16] [--layers 1 1 1 1]
                                             [--size 32] [--threads N] [--repeats 15]

Measured on the development machine (2 CPU cores, no GPU) with
``python benchmarks/bench_memory_format.py`` (see README, "Benchmarks", for the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import statistics
import time

import torch
import torch.nn.functional as F

from rkd.models import create_model

resnet_module = importlib.import_module("rkd.models.resnet")  # the packages' names are shadowed by
wrn_module = importlib.import_module("rkd.models.wide_resnet")  # their constructors in rkd.models


@contextlib.contextmanager
def nchw_stem():
    """The pre-channels-last stem: activations stay in the layout they come in."""
    saved = resnet_module.to_channels_last, wrn_module.to_channels_last
    resnet_module.to_channels_last = wrn_module.to_channels_last = lambda x: x
    try:
        yield
    finally:
        resnet_module.to_channels_last, wrn_module.to_channels_last = saved


def train_pass(model, x, y):
    model.train()
    F.cross_entropy(model(x), y).backward()


def attack_pass(model, x, y):
    model.eval()
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xx), y), xx)


def median_ms(fn, repeats: int, nchw: bool) -> float:
    times = []
    with nchw_stem() if nchw else contextlib.nullcontext():
        for _ in range(2):
            fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--layers", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw = {"width": args.width, "num_classes": 10}
    if args.arch.startswith("resnet"):
        kw["layers"] = args.layers
    rkd_model = create_model(args.arch, **kw)
    nchw_model = copy.deepcopy(rkd_model).to(memory_format=torch.contiguous_format)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.arch} width {args.width}, "
          f"{args.size}x{args.size} inputs; median of {args.repeats}")
    print(f"{'pass':40s} {'NCHW ms':>9s} {'channels-last ms':>17s} {'speed-up':>9s}")
    for name, fn, batch in (("train step fwd+bwd", train_pass, args.train_batch),
                            ("attack step input gradient", attack_pass, args.eval_batch)):
        x, y = torch.rand(batch, 3, args.size, args.size), torch.randint(0, 10, (batch,))
        a = median_ms(lambda: fn(nchw_model, x, y), args.repeats, nchw=True)
        b = median_ms(lambda: fn(rkd_model, x, y), args.repeats, nchw=False)
        a2 = median_ms(lambda: fn(nchw_model, x, y), args.repeats, nchw=True)  # interleaved: drift shows
        print(f"{name + f' (batch {batch})':40s} {min(a, a2):9.1f} {b:17.1f} {min(a, a2) / b:8.2f}x"
              f"   (NCHW runs {a:.1f} / {a2:.1f})")


if __name__ == "__main__":
    main()
