"""Cost of one training step of each method, as a ratio to a standard training step.

One process, one model configuration, one batch, the real methods of :mod:`rkd.methods`
(the step = ``training_step`` + ``backward`` + optimiser step). Methods are timed round-robin
(``--rounds`` rounds of ``--steps`` steps each, after ``--warmup`` steps) and the median round
is reported, so slow drifts of the machine hit every method alike. The teacher is a frozen
copy of the student architecture with random weights (the cost does not depend on them).

Next to each measured ratio is a *floor*: the passes the method cannot avoid, priced with
unit costs measured on the same model and batch:

    F    student forward with a graph          B    full backward (weights + input)
    Ft   teacher forward without a graph       Fx   teacher forward with a graph to x
    Bx_i backward from stage i to the input only, with no weight gradients (a VJP)

    standard         F + B                                   (= 1 by definition)
    Shafahi, fm-KD   F + Ft + B
    Robust-KD        F + Fx + B + n_proj * sum_g (Bx_g[teacher] + Bx_g[student] + Bx_g[double])
    AT PGD-k         k * (F + Bx_4) + F + B

where g runs over the Jacobian groups (each constrained stage for ``per_stage``, the deepest
stage once for ``joint``) and the double backward through the student's VJP graph is counted
as one more traversal of it (a lower bound: it really costs more, as it differentiates a
backward pass). The paper's own Robust-KD / normal-training ratio was about 8.4x (3.5 h vs
25 min, V100).

    python benchmarks/bench_train_step.py                      # digits model on CPU
    python benchmarks/bench_train_step.py --arch resnet50 --width 64 --layers 3 4 6 3 --batch 128 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rkd.config.schema import TrainAttackConfig
from rkd.methods import AdversarialTraining, RobustKD, ShafahiTransfer, StandardTraining, freeze
from rkd.models import create_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(args, device):
    kw = dict(num_classes=args.classes, width=args.width)
    if args.layers:
        kw["layers"] = args.layers
    model = create_model(args.arch, **kw).to(device)
    teacher = freeze(create_model(args.arch, **kw).to(device))
    return model, teacher


def methods(args, model, teacher):
    kd = dict(stages=(1, 2, 3, 4))
    out = {
        "standard": StandardTraining(model),
        "Shafahi (GAP-L2)": ShafahiTransfer(model, teacher, lam=1.0),
        "feature-only KD (gamma=0)": RobustKD(model, teacher, beta=50, gamma=0, **kd),
    }
    for n in args.n_proj:
        out[f"Robust-KD n_proj={n} per_stage"] = RobustKD(model, teacher, beta=50, gamma=1.0, n_proj=n, **kd)
    for n in args.n_proj:
        out[f"Robust-KD n_proj={n} joint"] = RobustKD(model, teacher, beta=50, gamma=1.0, n_proj=n,
                                                      jacobian_estimator="joint", **kd)
    out["AT PGD-7 (Linf 8/255)"] = AdversarialTraining(model, TrainAttackConfig(steps=7))
    return out


def step_fn(method, optimizer, x, y):
    def step():
        out = method.training_step(x, y)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    return step


def timed(fn, n, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def unit_costs(model, teacher, x, y, n, device) -> dict:
    """Seconds of the passes the floors are made of (see the module docstring)."""
    model.train()

    def fwd():
        model(x)

    def fwd_bwd():
        torch.nn.functional.cross_entropy(model(x), y).backward()

    def t_fwd_nograd():
        with torch.no_grad():
            teacher(x)

    def t_fwd_graph():
        teacher(x.detach().requires_grad_(True))

    costs = {"F": timed(fwd, n, device), "Ft": timed(t_fwd_nograd, n, device), "Fx": timed(t_fwd_graph, n, device)}
    costs["B"] = max(timed(fwd_bwd, n, device) - costs["F"], 0.0)
    model.zero_grad(set_to_none=True)
    for who, net in (("s", model), ("t", teacher)):
        for i in range(1, net.num_stages + 1):
            def fwd_only(i=i):
                xx = x.detach().requires_grad_(True)
                return xx, net.forward_intermediates(xx)[i - 1]

            def vjp(i=i):
                xx, f = fwd_only()
                torch.autograd.grad(f, xx, torch.randn_like(f))

            costs[f"Bx{i}_{who}"] = max(timed(vjp, n, device) - timed(lambda: fwd_only(), n, device), 0.0)
    return costs


def floor(name: str, c: dict, n_stages: int, n_proj: int | None) -> tuple[str, float]:
    std = c["F"] + c["B"]
    if name == "standard":
        return "F+B", 1.0
    if name.startswith(("Shafahi", "feature-only")):
        return "F+Ft+B", (c["F"] + c["Ft"] + c["B"]) / std
    if name.startswith("AT"):
        return "7(F+Bx)+F+B", (7 * (c["F"] + c[f"Bx{n_stages}_s"]) + std) / std
    groups = range(1, n_stages + 1) if "per_stage" in name else [n_stages]
    per_proj = sum(c[f"Bx{g}_t"] + 2 * c[f"Bx{g}_s"] for g in groups)
    label = f"F+Fx+B+{n_proj}x" + ("sum_i" if "per_stage" in name else "") + "(Bx_t+2Bx_s)"
    return label, (c["F"] + c["Fx"] + c["B"] + n_proj * per_proj) / std


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--layers", type=int, nargs="*", default=[1, 1, 1, 1])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--n-proj", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model, teacher = build(args, device)
    x = torch.rand(args.batch, 3, args.image, args.image, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    ms = methods(args, model, teacher)
    optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    steps = {k: step_fn(m.train(), optim, x, y) for k, m in ms.items()}
    for fn in steps.values():
        timed(fn, args.warmup, device)
    rounds = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, fn in steps.items():
            rounds[k].append(timed(fn, args.steps, device))
    t = {k: statistics.median(v) for k, v in rounds.items()}
    costs = unit_costs(model, teacher, x, y, max(args.steps, 3), device)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {dev}; {args.arch} width {args.width} layers {args.layers}, "
          f"batch {args.batch} x 3x{args.image}x{args.image}; median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'method':34s} {'ms/step':>9s} {'ratio':>7s} {'floor':>7s}  floor passes")
    for k, sec in t.items():
        n = int(k.split("n_proj=")[1].split()[0]) if "n_proj=" in k else None
        label, fl = floor(k, costs, model.num_stages, n)
        print(f"{k:34s} {1000 * sec:9.1f} {sec / t['standard']:6.2f}x {fl:6.2f}x  {label}")
    for mode in ("per_stage", "joint"):
        ks = [k for k in t if k.startswith("Robust-KD") and mode in k]
        if len(ks) >= 2:
            n0, n1 = (int(k.split("n_proj=")[1].split()[0]) for k in (ks[0], ks[-1]))
            extra = (t[ks[-1]] - t[ks[0]]) / (n1 - n0) / t["standard"]
            print(f"each extra projection ({mode}): +{extra:.2f}x a standard step")


if __name__ == "__main__":
    main()
