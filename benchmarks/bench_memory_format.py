"""Channels-last vs the default (NCHW) layout for rkd's convolutional networks.

rkd's ResNets and Wide ResNets keep weights and activations channels-last by default
(``model.channels_last``, :mod:`rkd.models.memory_format`). This times, interleaved in one run,
the passes that dominate rkd's wall time, with the model as rkd builds it and with the same
weights in a ``channels_last=False`` build, and prints the median milliseconds and the ratio:

* a training step's forward + backward (batch ``--train-batch``);
* an attack step's input gradient in eval mode (batch ``--eval-batch``);
* a Robust-KD training step (beta 50, gamma 10, all four stages, joint estimator, one
  projection: the quickstart's), student and frozen teacher in the same layout (batch
  ``--train-batch``): its double backward is the one pass the other two do not cover.

    python benchmarks/bench_memory_format.py [--arch resnet18] [--width 16] [--layers 1 1 1 1]
                                             [--size 32] [--threads N] [--repeats 15]

Measured on the development machine (2 CPU cores, no GPU) with
``python benchmarks/bench_memory_format.py`` (see README, "Benchmarks", for the figures).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rkd.methods.base import freeze
from rkd.methods.robust_kd import RobustKD
from rkd.models import create_model


def train_pass(model, x, y):
    model.train()
    F.cross_entropy(model(x), y).backward()


def attack_pass(model, x, y):
    model.eval()
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xx), y), xx)


def robust_kd_pass(method, x, y):
    method.model.train()
    method.training_step(x, y).loss.backward()


def median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def build(args, channels_last: bool, state=None):
    kw = {"width": args.width, "num_classes": 10, "channels_last": channels_last}
    if args.arch.startswith("resnet"):
        kw["layers"] = args.layers
    model = create_model(args.arch, **kw)
    if state is not None:
        model.load_state_dict(state)
    return model


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
    nhwc = build(args, True)
    nchw = build(args, False, nhwc.state_dict())
    teacher = build(args, True)
    kd = {fmt: RobustKD(m, freeze(build(args, fmt == "nhwc", teacher.state_dict())), beta=50.0, gamma=10.0,
                        stages=(1, 2, 3, 4), jacobian_estimator="joint", n_proj=1)
          for fmt, m in (("nhwc", nhwc), ("nchw", nchw))}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.arch} width {args.width}, "
          f"{args.size}x{args.size} inputs; median of {args.repeats}")
    print(f"{'pass':44s} {'NCHW ms':>9s} {'channels-last ms':>17s} {'speed-up':>9s}")
    passes = (("train step fwd+bwd", train_pass, args.train_batch, nchw, nhwc),
              ("attack step input gradient", attack_pass, args.eval_batch, nchw, nhwc),
              ("Robust-KD step (joint, 4 stages)", robust_kd_pass, args.train_batch, kd["nchw"], kd["nhwc"]))
    for name, fn, batch, a_obj, b_obj in passes:
        x, y = torch.rand(batch, 3, args.size, args.size), torch.randint(0, 10, (batch,))
        a = median_ms(lambda: fn(a_obj, x, y), args.repeats)
        b = median_ms(lambda: fn(b_obj, x, y), args.repeats)
        a2 = median_ms(lambda: fn(a_obj, x, y), args.repeats)  # interleaved: drift shows
        print(f"{name + f' (batch {batch})':44s} {min(a, a2):9.1f} {b:17.1f} {min(a, a2) / b:8.2f}x"
              f"   (NCHW runs {a:.1f} / {a2:.1f})")


if __name__ == "__main__":
    main()
