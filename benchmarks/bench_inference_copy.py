"""An attack step on the model as trained vs on :func:`rkd.models.inference.inference_copy`.

Every attack rkd runs in an evaluation (and the one-time adversarial sets) goes through the
frozen copy with batch norm folded into the convolutions. This times, interleaved in one run,
the input gradient of the cross-entropy (one attack step) and a forward pass (a clean or
gradient-free query) on three versions of the same eval-mode network:

* ``as trained``: the model itself (parameters require gradients);
* ``frozen``: a copy with no parameter requiring a gradient;
* ``folded``: the frozen copy with batch norm folded (what evaluation uses).

and checks that the folded logits match. Prints median milliseconds and the speed-up over
``as trained``::

    python benchmarks/bench_inference_copy.py [--arch resnet18] [--width 16] [--layers 1 1 1 1]
                                              [--size 32] [--batch 360] [--threads N] [--repeats 15]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_memory_format import median_ms  # the same timing as the layout benchmark

from rkd.models import create_model
from rkd.models.inference import frozen_copy, inference_copy


def attack_step(model, x, y):
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xx), y), xx)


def forward(model, x, y):
    with torch.no_grad():
        model(x)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--layers", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=360, help="the quickstart evaluates its 360 test digits")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw = {"width": args.width, "layers": args.layers} if args.arch.startswith("resnet") else {}
    model = create_model(args.arch, 10, **kw)
    model.train()
    x, y = torch.rand(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    with torch.no_grad():
        for _ in range(3):  # running statistics that are not the identity
            model(x)
    model.eval()
    versions = {"as trained": model, "frozen": frozen_copy(model), "folded": inference_copy(model, x[:64])}
    with torch.no_grad():
        gap = (versions["folded"](x) - model(x)).abs().max().item()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.arch} width {args.width}, "
          f"{args.size}x{args.size} inputs, batch {args.batch}; median of {args.repeats}; "
          f"folded logits differ by at most {gap:.1e}")
    print(f"{'pass':14s} " + " ".join(f"{k + ' ms':>13s}" for k in versions) + f" {'speed-up':>9s}")
    for name, fn in (("attack step", attack_step), ("forward", forward)):
        ms = {k: median_ms(lambda m=m: fn(m, x, y), args.repeats) for k, m in versions.items()}
        again = median_ms(lambda: fn(model, x, y), args.repeats)  # interleaved: drift shows
        base = min(ms["as trained"], again)
        print(f"{name:14s} " + " ".join(f"{v:13.1f}" for v in ms.values())
              + f" {base / ms['folded']:8.2f}x   (as trained again: {again:.1f})")


if __name__ == "__main__":
    main()
