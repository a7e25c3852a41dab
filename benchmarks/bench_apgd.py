"""rkd's APGD (rkd.attacks.apgd) vs torchattacks 3.3.0's APGD / APGDT on the same images.

Model: the ``preset:digits_standard`` architecture (CIFAR-style ResNet-18, width 16, one block
per stage, 32x32x3 digits), trained here for ``--epochs`` epochs of plain SGD on the digits
training split -- or, with ``--run-dir``, a finished rkd run's ``model.pt`` (loaded with
:func:`rkd.experiment.reevaluate.load_trained_model`). Attacks on the first ``--n`` test
images: APGD-CE and APGD-T (``--targets`` target classes; torchattacks' ``n_target_classes``
is set to the same number) with ``--steps`` iterations, seed 0, for each threat model. Prints
robust accuracy (%), wall and process-CPU seconds of each implementation and the speed ratio
torchattacks / rkd of the CPU seconds (CPU time is the fairer measure when other jobs share
the cores).

    python benchmarks/bench_apgd.py [--n 100] [--steps 100] [--targets 9] [--epochs 4] [--repeats 1] [--threads N]
                                    [--threats linf:8/255,l2:0.5] [--run-dir runs/<run>]

The load average is printed before and after: on a shared machine the seconds are only
comparable when it stays below the number of cores.

Measured on the development machine (2 CPU cores, no GPU, shared: other jobs kept the load
average at 5-6, hence one torch thread and CPU seconds) with
``python benchmarks/bench_apgd.py --threads 1``::

    torch 2.14.1+cu130, 1 threads; model: digits_standard architecture, 4 epochs (31 s)
    100 test images, clean accuracy 98.0%, 100 steps, seed 0, best of 1; load average 6.00 5.53 4.35
                                robust accuracy %            wall s             CPU s  ratio
    attack                        rkd   torchatt.      rkd torchatt.      rkd torchatt.  (CPU)
    APGD-CE linf 8/255            1.0         1.0      3.1      46.9      1.0      16.0  15.4x
    APGD-T9 linf 8/255            1.0         1.0     12.3      57.4      4.2      20.1   4.8x
    APGD-CE l2 0.5               70.0        70.0     27.5      42.6      9.5      14.8   1.6x
    APGD-T9 l2 0.5               65.0        65.0    131.2      92.6     76.8      90.5   1.2x
    load average at the end 5.18 5.84 5.00

Same robust accuracy everywhere (both draw the same random starts from the same seed). The gain
is where points fall: a point leaves rkd's working batch at its first misclassified iterate,
while torchattacks runs every attacked point for all ``steps``; on points that stay robust
(APGD-T at L2 0.5, 65% robust) both do the same work and the ratio goes to ~1. The wall seconds
of that run are unreliable (the machine was oversubscribed); the CPU seconds are the measure.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from rkd.attacks import apgd
from rkd.config import load_config
from rkd.data import build_dataset
from rkd.experiment.builders import build_model


def parse_eps(text: str) -> float:
    if "/" in text:
        num, den = text.split("/")
        return float(num) / float(den)
    return float(text)


def quick_model(epochs: int, seed: int = 0):
    """The digits_standard architecture trained for a few epochs (SGD, lr 0.05, cosine)."""
    torch.manual_seed(seed)
    cfg = load_config("preset:digits_standard")
    model = build_model(cfg, 10)
    train = build_dataset("digits", train=True)
    x, y = train.images, train.labels
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    n_batches = (len(y) + 63) // 64
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * n_batches)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(n_batches):
            b = perm[i * 64:(i + 1) * 64]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    return model.eval(), build_dataset("digits", train=False)


def robust_acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()


def timed(fn, repeats: int = 1):
    """(result, best wall seconds, best process CPU seconds) of ``repeats`` calls."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return out, wall, cpu


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def model_under_test(args) -> tuple:
    """(model in eval mode, test set, where it came from): ``--run-dir``'s model or a quick one;
    sets ``--threads`` first. Shared by the benchmarks that take these options."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_dir:
        from rkd.experiment.reevaluate import load_trained_model

        _, model, test_set = load_trained_model(args.run_dir)
        source = args.run_dir
    else:
        (model, test_set), t_train, _ = timed(lambda: quick_model(args.epochs))
        source = f"digits_standard architecture, {args.epochs} epochs ({t_train:.0f} s)"
    return model.eval(), test_set, source


def torchattacks_apgd(model, x, y, norm, eps, steps, targets):
    import torchattacks

    ta_norm = "Linf" if norm == "linf" else "L2"
    if targets == 0:
        atk = torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=steps, loss="ce", seed=0)
    else:
        atk = torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=steps, n_classes=10, seed=0)
        atk.n_target_classes = targets
    return atk(x, y)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="number of test images")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--targets", type=int, default=9)
    p.add_argument("--epochs", type=int, default=4, help="training epochs of the quick model")
    p.add_argument("--threats", default="linf:8/255,l2:0.5", help="comma-separated norm:eps")
    p.add_argument("--run-dir", default=None, help="a finished rkd run directory (model.pt) instead")
    p.add_argument("--repeats", type=int, default=1, help="best of this many calls of each attack")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    model, test_set, source = model_under_test(args)
    x, y = test_set.images[:args.n], test_set.labels[:args.n]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: {source}")
    print(f"{args.n} test images, clean accuracy {robust_acc(model, x, y):.1f}%, {args.steps} steps, seed 0, "
          f"best of {args.repeats}; load average {load_average()}")
    print(f"{'':22s} {'robust accuracy %':>22s} {'wall s':>17s} {'CPU s':>17s} {'ratio':>6s}")
    print(f"{'attack':22s} {'rkd':>10s} {'torchatt.':>11s} {'rkd':>8s} {'torchatt.':>9s} {'rkd':>8s} "
          f"{'torchatt.':>9s} {'(CPU)':>6s}")
    for spec in args.threats.split(","):
        norm, eps_text = spec.split(":")
        eps = parse_eps(eps_text)
        for targets in (0, args.targets):
            label = f"APGD-{'CE' if targets == 0 else f'T{targets}'} {norm} {eps_text}"
            ours, t_ours, c_ours = timed(lambda: apgd(model, x, y, norm=norm, eps=eps, steps=args.steps,
                                              loss="dlr" if targets else "ce", targets=targets, seed=0),
                                 args.repeats)
            theirs, t_theirs, c_theirs = timed(lambda: torchattacks_apgd(model, x, y, norm, eps, args.steps, targets),
                                     args.repeats)
            print(f"{label:22s} {robust_acc(model, ours, y):10.1f} {robust_acc(model, theirs, y):11.1f} "
                  f"{t_ours:8.1f} {t_theirs:9.1f} {c_ours:8.1f} {c_theirs:9.1f} {c_theirs / c_ours:5.1f}x")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
