"""Prepared GPU check: every method's training step at paper scale, AMP off and on, in one run.

Not yet run on a GPU: no GPU machine was available when it was written.

What it measures, per case and per AMP mode (a real ``method.training_step`` + backward +
optimiser step, as :class:`rkd.engine.Trainer` does it, on synthetic tensors already on the
device; random weights -- the cost does not depend on them):

    standard        CIFAR ResNet-50 (width 64), 32 px, batch 128
    robust_kd_ps    Robust-KD, ResNet-50 student + frozen ResNet-50 teacher, stages 1-4,
                    beta 50, gamma 5e3, n_proj 1, Jacobian estimator per_stage (Algorithm 1)
    robust_kd_joint the same with the joint estimator
    shafahi         Shafahi GAP-L2 transfer, same networks
    at_wrn          PGD-7 AT (Linf 8/255, step 2/255), WRN-34-10, 32 px, batch 128
    trades_wrn      TRADES (beta 6, 10 steps of 2/255), same WRN
    mae             MAE ViT-B/16 pretraining (reconstruction, mask 0.75), 224 px, batch 128
    std_224         standard training of torchvision ResNet-50 at 224 px, batch 128
    macd            MACD stage 3: that ResNet-50 student, frozen ViT-B/16 MAE teacher (concat_linear
                    feature module), paired clean|adversarial batches, batch 128
    at_224          PGD-7 AT (Linf 8/255) of the same ResNet-50 at 224 px: the MACD paper's AT row

The 224 px cases feed 32 px CIFAR-shaped images that the models resize inside
(``set_input_size``), as jobs/macd/*.yaml do. Sizes follow jobs/cifar10/*.yaml and
jobs/macd/*.yaml (their batch 128); ``--batch NAME=N`` overrides one case.

Printed per run: timed steps, images/s, ms/step, peak CUDA memory (``max_memory_allocated``,
reset per run; n/a on CPU), whether every loss was finite, the loss terms of the last step, and
under fp16 AMP how many steps the GradScaler skipped (its scale decreased). At the end: the cost
ratios Robust-KD/standard (per estimator), Shafahi/standard, TRADES/AT, MACD/AT (same student,
224 px; the paper's AT/MACD is 9.42x) and MACD/standard-224 (target <= 2x), the AMP speed-ups,
the data-loader share of step time for the standard case, and the total wall time.

AMP = ``torch.autocast(device, float16)`` + ``torch.amp.GradScaler`` (``--amp-dtype bf16``: bfloat16,
no scaler); on CPU bfloat16 without a scaler, as the Trainer does. Note that AT/TRADES run their
inner attacks in fp32 under AMP (``rkd.methods.base.attack_mode``), so their AMP speed-up is small.
rkd's configs refuse ``train.amp`` for Robust-KD with ``gamma > 0`` (its Jacobian term needs fp32);
the check still runs those rows with AMP on, to show what the refused setting would compute (on
CPU, bf16: the Jacobian term moves from ~1e5 to ~1e6 in two steps, README "Numerics").

Data-loader share: a real ``torch.utils.data.DataLoader`` (``rkd.data.loader.make_loader``, the
Trainer's, ``--workers`` workers, pinned memory on CUDA) over an in-memory uint8
``TensorImageDataset`` with the project's CIFAR augmentation (``rkd.data.transforms``), batches
moved to the device; share = loader / (loader + standard step). An upper bound: the Trainer does
not synchronise every step, so the GPU overlaps part of the loading.

Budget: each run gets an equal share of what is left of ``--budget-s`` (warm-up included), runs
at most ``--steps`` timed steps (at least 3), and runs that no longer fit are skipped and named.
A case that raises prints one line and the check goes on; the exit code is 1 if any case failed,
2 if it cannot start (no CUDA with ``--device cuda``, a missing package).

Needs: torch (>= 2.3, for ``torch.amp.GradScaler``) and rkd's own modules, which import
torchvision (with its numpy and Pillow; ``rkd.models``), numpy (``rkd.data``), pydantic >= 2 (every
module of ``rkd.methods`` and ``rkd.config``, unavoidable: TrainAttackConfig and the method classes
live there) and PyYAML (``rkd.config``). Not ray, mlflow, tqdm or a dataset. rkd need not be
installed: the repository root is put on ``sys.path``.

    python benchmarks/gpu_check.py                               # the check, on cuda (~7 min)
    python benchmarks/gpu_check.py --only standard macd at_224   # some cases
    nice -n 19 python benchmarks/gpu_check.py --device cpu --tiny   # seconds: does every case run?

``--tiny`` shrinks every network (ResNet-50 width 8 with one block per stage, WRN-10-1, the 32 px
``mae_vit_tiny``, a CIFAR ResNet-18 width 8 in place of torchvision's ResNet-50, no resizing),
batch 4, 1 warm-up + 2 timed steps: it checks that every case runs, not what it costs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"torchvision": "rkd.models", "numpy": "rkd.data", "pydantic": "rkd.methods, rkd.config",
          "yaml": "rkd.config (PyYAML)"}
RKD_MODULES = ("rkd.models", "rkd.methods", "rkd.config.schema", "rkd.data.loader", "rkd.data.transforms")

# paper scale (jobs/cifar10, jobs/macd) and the CPU smoke-test scale
# (tiny: CIFAR ResNet-18 stands in for torchvision's ResNet-50, whose bf16 CPU step takes seconds)
PAPER = dict(cifar=dict(arch="resnet50", width=64), wrn=dict(arch="wrn34_10"), vit="mae_vit_base_patch16",
             student=dict(arch="tv_resnet50"), side=224, batch=128, steps=200, warmup=10)
TINY = dict(cifar=dict(arch="resnet50", width=8, layers=[1, 1, 1, 1]),
            wrn=dict(arch="wide_resnet", depth=10, widen_factor=1), vit="mae_vit_tiny",
            student=dict(arch="resnet18", width=8, layers=[1, 1, 1, 1]), side=None, batch=4, steps=2, warmup=1)


# ------------------------------------------------------------------------------ models and methods
def cnn(s: dict, key: str, classes: int = 10):
    from rkd.models import create_model

    kw = dict(s[key])
    return create_model(kw.pop("arch"), num_classes=classes, mean="cifar10", **kw)


def resized(model, s: dict):
    from rkd.models import set_input_size

    return set_input_size(model, s["side"]) if s["side"] else model


def student_224(s: dict):
    return resized(cnn(s, "student"), s)


def mae_model(s: dict, **kw):
    from rkd.models import create_model

    return resized(create_model(s["vit"], mean="cifar10", **kw), s)


def frozen(model):
    from rkd.methods import freeze

    return freeze(model)


def linf_attack(steps: int, step_size: float | None = None, trades: bool = False):
    from rkd.config.schema import TradesAttackConfig, TrainAttackConfig

    return (TradesAttackConfig if trades else TrainAttackConfig)(norm="linf", eps=8 / 255, steps=steps,
                                                                step_size=step_size)


def standard(s):
    from rkd.methods import StandardTraining

    return StandardTraining(cnn(s, "cifar"))


def robust_kd(estimator: str):
    def build(s):
        from rkd.methods import RobustKD

        return RobustKD(cnn(s, "cifar"), frozen(cnn(s, "cifar", 1000)), beta=50, gamma=5e3, stages=(1, 2, 3, 4),
                        n_proj=1, jacobian_estimator=estimator)
    return build


def shafahi(s):
    from rkd.methods import ShafahiTransfer

    return ShafahiTransfer(cnn(s, "cifar"), frozen(cnn(s, "cifar", 1000)), lam=1.0)


def at_wrn(s):
    from rkd.methods import AdversarialTraining

    return AdversarialTraining(cnn(s, "wrn"), linf_attack(7, 2 / 255))


def trades_wrn(s):
    from rkd.methods import Trades

    return Trades(cnn(s, "wrn"), beta=6.0, attack=linf_attack(10, 2 / 255, trades=True))


def mae(s):
    from rkd.methods import MaeTraining

    return MaeTraining(mae_model(s), stage="reconstruction", mask_ratio=0.75)


def std_224(s):
    from rkd.methods import StandardTraining

    return StandardTraining(student_224(s))


def macd(s):
    from rkd.methods import Macd

    teacher = frozen(mae_model(s, fusion="concat_linear"))
    return Macd(student_224(s), teacher, teacher_mask_ratio=0.75, student_patch=8, student_mask_ratio=0.7)


def at_224(s):
    from rkd.methods import AdversarialTraining

    return AdversarialTraining(student_224(s), linf_attack(7))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable
    channels: int = 3
    adamw: bool = False


CASES = [Case("standard", standard), Case("robust_kd_ps", robust_kd("per_stage")),
         Case("robust_kd_joint", robust_kd("joint")), Case("shafahi", shafahi), Case("at_wrn", at_wrn),
         Case("trades_wrn", trades_wrn), Case("mae", mae, adamw=True), Case("std_224", std_224),
         Case("macd", macd, channels=6), Case("at_224", at_224)]


# ------------------------------------------------------------------------------------ one run
@dataclass
class Result:
    case: str
    amp: bool
    steps: int = 0
    seconds: float = 0.0
    batch: int = 0
    peak_gib: float | None = None
    finite: bool = True
    skipped: tuple[int, int] | None = None  # GradScaler skips (warm-up, timed)
    terms: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / max(self.steps, 1)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtype(args, device):
    return torch.bfloat16 if device.type != "cuda" or args.amp_dtype == "bf16" else torch.float16


def optimizer(method, case: Case):
    params = list(method.trainable_parameters())
    if case.adamw:
        return torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.05)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)


class Stepper:
    """One Trainer-style step (autocast forward, scaled backward, scaler step) plus bookkeeping."""

    def __init__(self, method, case, amp, args, device, batch):
        self.method, self.opt, self.batch = method, optimizer(method, case), batch
        dtype = amp_dtype(args, device)
        self.ctx = torch.autocast(device.type, dtype=dtype) if amp else nullcontext()
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
        self.losses, self.skips, self.out = [], 0, None

    def __call__(self):
        with self.ctx:
            self.out = self.method.training_step(*self.batch)
        self.opt.zero_grad(set_to_none=True)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.scale(self.out.loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:
            self.skips += 1
        self.losses.append(self.out.loss.detach())


def run_steps(step: Stepper, n: int, until: float, device) -> tuple[int, float]:
    """Up to ``n`` steps (at least 3 when ``n`` allows), stopping at time ``until``; (steps, seconds)."""
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n and (done < min(3, n) or time.perf_counter() < until):
        step()
        sync(device)
        done += 1
    return done, time.perf_counter() - t0


def run_one(method, case: Case, amp: bool, args, scale: dict, device, slice_s: float) -> Result:
    batch = args.batch.get(case.name, scale["batch"])
    res = Result(case.name, amp, batch=batch)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, case.channels, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    step = Stepper(method.train(), case, amp, args, device, (x, y))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    end = time.perf_counter() + slice_s
    run_steps(step, args.warmup, end - 0.5 * slice_s, device)  # warm-up: at most half the slice
    warm_skips = step.skips
    res.steps, res.seconds = run_steps(step, args.steps, end, device)
    res.finite = bool(torch.stack(step.losses).float().isfinite().all())
    res.skipped = (warm_skips, step.skips - warm_skips) if step.scaler.is_enabled() else None
    res.terms = {k: float(v.float()) for k, v in step.out.terms.items() if k != "loss"}
    if device.type == "cuda":
        res.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return res


# -------------------------------------------------------------------------------- data loader
def loader_seconds(args, scale: dict, device) -> float:
    """Seconds per batch of the Trainer's loader over an in-memory CIFAR-shaped set, to the device."""
    from rkd.data.arrays import TensorImageDataset
    from rkd.data.loader import make_loader
    from rkd.data.transforms import train_transform

    batch, n = args.batch.get("standard", scale["batch"]), max(2, min(args.steps, 50))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * n, 3, 32, 32), dtype=torch.uint8, generator=g)
    ds = TensorImageDataset(images, torch.arange(batch * n) % 10, transform=train_transform(flip=True))
    loader = make_loader(ds, batch, shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda",
                         drop_last=True)
    sync(device)
    t0, seen = time.perf_counter(), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += 1
    sync(device)
    return (time.perf_counter() - t0) / max(seen, 1)


# ---------------------------------------------------------------------------------- reporting
def fmt_result(r: Result) -> str:
    head = f"{r.case:<16}amp={'on ' if r.amp else 'off'}"
    if r.error:
        return f"{head} FAILED: {r.error}"
    peak = f"{r.peak_gib:6.2f} GiB" if r.peak_gib is not None else "   n/a    "
    skips = f"scaler skipped {r.skipped[0]} warm-up / {r.skipped[1]} timed" if r.skipped else "no scaler"
    terms = " ".join(f"{k}={v:.3g}" for k, v in r.terms.items())
    return (f"{head} {r.steps:4d} steps {r.batch * r.steps / r.seconds:9.1f} img/s {r.ms:9.1f} ms/step  peak {peak}"
            f"  loss {'finite' if r.finite else 'NOT FINITE'}  {skips}  [{terms}]")


def ratio_lines(res: dict) -> list[str]:
    pairs = [("Robust-KD per_stage / standard", "robust_kd_ps", "standard", "paper: ~8.4x, 3.5 h vs 25 min, V100"),
             ("Robust-KD joint / standard", "robust_kd_joint", "standard", ""),
             ("Shafahi / standard", "shafahi", "standard", ""),
             ("TRADES / AT (WRN)", "trades_wrn", "at_wrn", ""),
             ("MACD / AT (ResNet-50, 224 px)", "macd", "at_224", "paper: AT/MACD = 25.63/2.72 = 9.42x"),
             ("MACD / standard (224 px)", "macd", "std_224", "target <= 2x")]
    out = []
    for label, a, b, note in pairs:
        if not any((k, amp) in res for k in (a, b) for amp in (False, True)):
            continue  # neither case was run
        cells = []
        for amp in (False, True):
            ra, rb = res.get((a, amp)), res.get((b, amp))
            ok = ra and rb and not ra.error and not rb.error and ra.batch == rb.batch
            cells.append(f"amp {'on ' if amp else 'off'} " + (f"{ra.ms / rb.ms:6.2f}x" if ok else "    n/a"))
        out.append(f"  {label:<32}{'   '.join(cells)}" + (f"   ({note})" if note else ""))
    return out


def amp_lines(res: dict) -> list[str]:
    out = []
    for case in CASES:
        off, on = res.get((case.name, False)), res.get((case.name, True))
        if off and on and not off.error and not on.error:
            out.append(f"  {case.name:<16}{off.ms / on.ms:5.2f}x")
    return out


def loader_line(res: dict, load_s: float | None) -> list[str]:
    if load_s is None:
        return ["data-loader share: n/a (not measured)"]
    out = [f"data loader: {1000 * load_s:.1f} ms/batch"]
    for amp in (False, True):
        r = res.get(("standard", amp))
        if r and not r.error:
            share = load_s / (load_s + r.seconds / r.steps)
            out.append(f"data-loader share of a standard step, amp {'on ' if amp else 'off'}: {100 * share:.1f}%")
    return out


# ------------------------------------------------------------------------------------- driver
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=None, help="most timed steps per run (default 200; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default 10; tiny 1)")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget of all runs")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"cases: {[c.name for c in CASES]}")
    p.add_argument("--tiny", action="store_true", help="tiny models, batch 4, 32 px, 2 steps (CPU smoke test)")
    p.add_argument("--amp-dtype", choices=["fp16", "bf16"], default="fp16")
    p.add_argument("--batch", nargs="+", default=[], metavar="NAME=N", help="per-case batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the loader measurement")
    args = p.parse_args(argv)
    scale = TINY if args.tiny else PAPER
    args.steps = scale["steps"] if args.steps is None else args.steps
    args.warmup = scale["warmup"] if args.warmup is None else args.warmup
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    names = {c.name for c in CASES}
    try:
        args.batch = {k: int(v) for k, v in (b.split("=", 1) for b in args.batch)}
    except ValueError:
        p.error("--batch takes NAME=N")
    bad = (set(args.only or ()) | set(args.batch)) - names
    if bad:
        p.error(f"unknown case(s) {sorted(bad)}; cases: {[c.name for c in CASES]}")
    return args, scale


def preflight(args) -> torch.device:
    """The device, or exit 2 with one line (no CUDA, a missing package)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} but CUDA is not available (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}); run it on a CUDA machine, or use --device cpu --tiny")
        sys.exit(2)
    if importlib.util.find_spec("rkd") is None:
        sys.path.insert(0, str(REPO))
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu_check: missing package(s) {missing} (needed by {[NEEDED[m] for m in missing]}); "
              "it needs torch, torchvision, numpy, pydantic>=2 and PyYAML")
        sys.exit(2)
    try:
        for mod in RKD_MODULES:
            importlib.import_module(mod)
    except ImportError as exc:
        print(f"gpu_check: cannot import rkd ({one_line(exc)}); "
              "it needs torch, torchvision, numpy, pydantic>=2, PyYAML")
        sys.exit(2)
    return device


def header(args, device) -> str:
    if device.type == "cuda":
        dev = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cudnn "
               f"{torch.backends.cudnn.version()}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32} conv "
               f"{torch.backends.cudnn.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
    else:
        dev = f"CPU, {torch.get_num_threads()} thread(s)"
    return (f"torch {torch.__version__}, {dev}; {'tiny' if args.tiny else 'paper'} scale, amp dtype "
            f"{str(amp_dtype(args, device)).split('.')[-1]}, <= {args.steps} timed steps after {args.warmup} "
            f"warm-up, budget {args.budget_s:g} s")


def run_case(case: Case, args, scale, device, t_start, runs_left: int, res: dict) -> None:
    """Both AMP modes of one case into ``res``; skipped runs get no entry."""
    if args.budget_s - (time.perf_counter() - t_start) <= 1.0:
        return
    try:
        torch.manual_seed(0)
        method = case.build(scale).to(device)
    except Exception as exc:  # noqa: BLE001 -- report and go on
        for amp in (False, True):
            res[(case.name, amp)] = Result(case.name, amp, error=f"build: {one_line(exc)}")
            print(fmt_result(res[(case.name, amp)]), flush=True)
        return
    for i, amp in enumerate((False, True)):
        left = args.budget_s - (time.perf_counter() - t_start)
        if left <= 1.0:
            return
        try:
            res[(case.name, amp)] = run_one(method, case, amp, args, scale, device, left / (runs_left - i))
        except Exception as exc:  # noqa: BLE001
            res[(case.name, amp)] = Result(case.name, amp, error=one_line(exc))
        print(fmt_result(res[(case.name, amp)]), flush=True)
    del method
    if device.type == "cuda":
        torch.cuda.empty_cache()


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}"


def main(argv=None) -> int:
    args, scale = parse(argv)
    device = preflight(args)
    t_start = time.perf_counter()
    print(header(args, device), flush=True)
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    load_s = None
    if any(c.name == "standard" for c in cases):
        try:
            load_s = loader_seconds(args, scale, device)
        except Exception as exc:  # noqa: BLE001
            print(f"data loader FAILED: {one_line(exc)}")
    res: dict = {}
    for i, case in enumerate(cases):
        run_case(case, args, scale, device, t_start, 2 * (len(cases) - i), res)
    skipped = [f"{c.name} amp={'on' if a else 'off'}" for c in cases for a in (False, True) if (c.name, a) not in res]
    print("\ncost ratios (ms/step over ms/step, same batch):", *ratio_lines(res), sep="\n")
    print("AMP speed-up (ms/step off / on):", *amp_lines(res), sep="\n")
    print(*loader_line(res, load_s), sep="\n")
    if skipped:
        print(f"skipped (budget {args.budget_s:g} s spent): {', '.join(skipped)}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 1 if any(r.error for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
