"""Prepared GPU check: every method's training step at paper scale under each AMP mode, then
the speed of each setting, the numerics, resume and placement probes, in one run.

Not yet run on a GPU: no GPU machine was available when it was written (README, Benchmarks).

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
jobs/macd/*.yaml (their batch 128); ``--batch NAME=N`` overrides one case. Every run uses rkd's
GPU defaults (``rkd.engine.precision``): channels-last ResNets/WRNs, TF32 and cudnn.benchmark on
(off for Robust-KD, as its configs resolve them), the fused optimiser.

Printed per run (AMP off, bf16 and fp16 by default; ``--amp`` picks): timed steps, images/s,
ms/step, peak CUDA memory (``max_memory_allocated``, reset per run; n/a on CPU), whether every
loss was finite, the loss terms of the last step, and under fp16 how many steps the GradScaler
skipped (its scale decreased). AMP is rkd's own (``rkd.engine.precision.Precision``, as the
Trainer runs it): bf16 autocast without a loss scale, the inner attacks of AT/TRADES in bf16
too; fp16 autocast with a GradScaler, the inner attacks in fp32. rkd's configs refuse AMP for
Robust-KD with ``gamma > 0`` (its Jacobian term needs fp32); the check still runs those rows
under AMP, to show what the refused setting would compute.

At the end: the cost ratios Robust-KD/standard (per estimator), Shafahi/standard, TRADES/AT,
MACD/AT (same student, 224 px; the paper's AT/MACD is 9.42x) and MACD/standard-224 (target
<= 2x) per AMP mode; the AMP speed-ups; then the probes of ``gpu_check_probes.py``: the speed of
each setting side by side on the standard case (``--settings-budget-s``), Robust-KD's gradient
agreement with fp32 under TF32/bf16/fp16, resume across devices, AMP modes and GPU counts, the
placement of a zero-GPU trial, and the host vs GPU-resident data loader with its share of a
standard step (an upper bound: the Trainer does not synchronise every step). Then the total
wall time.

Budget: each run gets an equal share of what is left of ``--budget-s`` (warm-up included), runs
at most ``--steps`` timed steps (at least 3), and runs that no longer fit are skipped and named;
the settings comparison has its own ``--settings-budget-s`` (torch.compile's first step, the
compilation, is reported apart and not counted). A case or probe that raises prints one line
and the check goes on; the exit code is 1 if any case or probe failed, 2 if it cannot start (no
CUDA with ``--device cuda``, a missing package).

Needs: torch (>= 2.9, for ``fp32_precision``) and rkd's own modules, which import torchvision
(with its numpy and Pillow; ``rkd.models``), numpy (``rkd.data``), pydantic >= 2 (every module of
``rkd.methods`` and ``rkd.config``, unavoidable: TrainAttackConfig and the method classes live
there) and PyYAML (``rkd.config``). Not ray, mlflow, tqdm or a dataset. rkd need not be
installed: the repository root is put on ``sys.path``.

    python benchmarks/gpu_check.py                               # the check, on cuda (<= 8 min)
    python benchmarks/gpu_check.py --only standard macd at_224   # some cases
    nice -n 19 python benchmarks/gpu_check.py --device cpu --tiny   # seconds: does every case run?

``--tiny`` shrinks every network (ResNet-50 width 8 with one block per stage, WRN-10-1, the 32 px
``mae_vit_tiny``, a CIFAR ResNet-18 width 8 in place of torchvision's ResNet-50, no resizing),
batch 4, 1 warm-up + 2 timed steps, torch.compile with the ``aot_eager`` backend (inductor's C++
build takes ~30 s on CPU): it checks that every case and probe runs, not what it costs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gpu_check_probes as probes
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
    fp32_only: bool = False  # Robust-KD: TF32 off and NCHW, as its configs resolve them


CASES = [Case("standard", standard), Case("robust_kd_ps", robust_kd("per_stage"), fp32_only=True),
         Case("robust_kd_joint", robust_kd("joint"), fp32_only=True), Case("shafahi", shafahi), Case("at_wrn", at_wrn),
         Case("trades_wrn", trades_wrn), Case("mae", mae, adamw=True), Case("std_224", std_224),
         Case("macd", macd, channels=6), Case("at_224", at_224)]


# ------------------------------------------------------------------------------------ one run
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class Result:
    case: str
    amp: str  # off | bf16 | fp16, or a settings label
    steps: int = 0
    seconds: float = 0.0
    batch: int = 0
    peak_gib: float | None = None
    finite: bool = True
    skipped: tuple[int, int] | None = None  # GradScaler skips (warm-up, timed)
    terms: dict = field(default_factory=dict)
    first_step_s: float | None = None  # torch.compile's compilation (settings runs)
    error: str | None = None

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / max(self.steps, 1)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Settings:
    """The speed settings of one run, as rkd's Trainer would resolve them on this device."""

    channels_last: bool = True
    tf32: bool = True
    cudnn_benchmark: bool = True
    fused: bool = True
    compile: bool = False

    @classmethod
    def defaults(cls, device, case: Case) -> "Settings":
        from rkd.engine.precision import resolve_auto

        return cls(channels_last=not case.fp32_only, tf32=resolve_auto("auto", device, not case.fp32_only),
                   cudnn_benchmark=resolve_auto("auto", device), fused=resolve_auto("auto", device))

    def apply(self, method) -> None:
        from rkd.engine.precision import apply_backend_settings, compile_in_place
        from rkd.models.memory_format import ChannelsLast

        apply_backend_settings(tf32=self.tf32, cudnn_benchmark=self.cudnn_benchmark)
        for m in method.modules():
            if isinstance(m, ChannelsLast):
                m.set_channels_last(self.channels_last)
        if self.compile:
            compile_in_place(method.model)


def optimizer(method, case: Case, fused: bool):
    params = list(method.trainable_parameters())
    kw = {"fused": True} if fused else {}
    if case.adamw:
        return torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.05, **kw)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4, **kw)


class Stepper:
    """One Trainer step (rkd's AMP context, scaled backward, scaler step) plus bookkeeping."""

    def __init__(self, method, case, amp: str, settings: Settings, device, batch):
        from rkd.engine.precision import Precision

        self.method, self.opt, self.batch = method, optimizer(method, case, settings.fused), batch
        self.precision = Precision.from_setting(False if amp == "off" else amp, device)
        self.scaler = self.precision.scaler
        self.losses, self.skips, self.out = [], 0, None

    def __call__(self):
        with self.precision.step():
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


def run_one(method, case: Case, amp: str, args, scale: dict, device, slice_s: float,
            settings: Settings | None = None, label: str | None = None) -> Result:
    settings = settings or Settings.defaults(device, case)
    batch = args.batch.get(case.name, scale["batch"])
    res = Result(case.name, label or amp, batch=batch)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, case.channels, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    settings.apply(method)
    step = Stepper(method.train(), case, amp, settings, device, (x, y))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if settings.compile:  # the compilation: reported apart, not timed as a step
        res.first_step_s = run_steps(step, 1, 0.0, device)[1]
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


# ---------------------------------------------------------------------------------- reporting
def fmt_result(r: Result) -> str:
    head = f"{r.case:<16}amp={r.amp:<5}"
    if r.error:
        return f"{head} FAILED: {r.error}"
    peak = f"{r.peak_gib:6.2f} GiB" if r.peak_gib is not None else "   n/a    "
    skips = f"scaler skipped {r.skipped[0]} warm-up / {r.skipped[1]} timed" if r.skipped else "no scaler"
    terms = " ".join(f"{k}={v:.3g}" for k, v in r.terms.items())
    return (f"{head} {r.steps:4d} steps {r.batch * r.steps / r.seconds:9.1f} img/s {r.ms:9.1f} ms/step  peak {peak}"
            f"  loss {'finite' if r.finite else 'NOT FINITE'}  {skips}  [{terms}]")


def ratio_lines(res: dict, modes) -> list[str]:
    pairs = [("Robust-KD per_stage / standard", "robust_kd_ps", "standard", "paper: ~8.4x, 3.5 h vs 25 min, V100"),
             ("Robust-KD joint / standard", "robust_kd_joint", "standard", ""),
             ("Shafahi / standard", "shafahi", "standard", ""),
             ("TRADES / AT (WRN)", "trades_wrn", "at_wrn", ""),
             ("MACD / AT (ResNet-50, 224 px)", "macd", "at_224", "paper: AT/MACD = 25.63/2.72 = 9.42x"),
             ("MACD / standard (224 px)", "macd", "std_224", "target <= 2x")]
    out = []
    for label, a, b, note in pairs:
        if not any((k, amp) in res for k in (a, b) for amp in modes):
            continue  # neither case was run
        cells = []
        for amp in modes:
            ra, rb = res.get((a, amp)), res.get((b, amp))
            ok = ra and rb and not ra.error and not rb.error and ra.batch == rb.batch
            cells.append(f"{amp:<4} " + (f"{ra.ms / rb.ms:6.2f}x" if ok else "    n/a"))
        out.append(f"  {label:<32}{'   '.join(cells)}" + (f"   ({note})" if note else ""))
    return out


def amp_lines(res: dict, modes) -> list[str]:
    out = []
    for case in CASES:
        off = res.get((case.name, "off"))
        cells = [f"{m} {off.ms / r.ms:5.2f}x" for m in modes if m != "off"
                 for r in [res.get((case.name, m))] if off and r and not off.error and not r.error]
        if cells:
            out.append(f"  {case.name:<16}" + "   ".join(cells))
    return out


# ---------------------------------------------------------------------------------- settings
SETTING_RUNS = [("rkd defaults", {}, "off"), ("no channels-last", {"channels_last": False}, "off"),
                ("no TF32", {"tf32": False}, "off"), ("no cudnn.benchmark", {"cudnn_benchmark": False}, "off"),
                ("no fused optimiser", {"fused": False}, "off"), ("+ bf16 AMP", {}, "bf16"),
                ("+ torch.compile", {"compile": True}, "off")]


def settings_table(args, scale, device) -> bool:
    """The standard case under each setting, side by side; True if every run passed."""
    from rkd.engine.precision import backend_settings_kept

    case = next(c for c in CASES if c.name == "standard")
    base = Settings.defaults(device, case)
    rows, t0 = [], time.perf_counter()
    for i, (label, change, amp) in enumerate(SETTING_RUNS):
        left = args.settings_budget_s - (time.perf_counter() - t0)
        if left <= 1.0:
            print(f"  {label}: skipped (settings budget {args.settings_budget_s:g} s spent)")
            continue
        try:
            torch.manual_seed(0)
            with backend_settings_kept():
                method = case.build(scale).to(device)
                settings = Settings(**{**base.__dict__, **change})
                r = run_one(method, case, amp, args, scale, device, left / (len(SETTING_RUNS) - i), settings, label)
        except Exception as exc:  # noqa: BLE001 -- report and go on
            r = Result(case.name, label, error=one_line(exc))
        rows.append(r)
    ref = rows[0] if rows and not rows[0].error else None
    print(f"speed of each setting (standard case, batch {args.batch.get('standard', scale['batch'])}; "
          f"defaults here: {base}):")
    for r in rows:
        if r.error:
            print(f"  {r.amp:<20} FAILED: {r.error}")
            continue
        peak = f"{r.peak_gib:6.2f} GiB" if r.peak_gib is not None else "n/a"
        ratio = f"{ref.ms / r.ms:5.2f}x" if ref else "n/a"
        compiled = f"  (compilation {r.first_step_s:.1f} s)" if r.first_step_s is not None else ""
        print(f"  {r.amp:<20}{r.ms:9.1f} ms/step {r.batch * r.steps / r.seconds:9.1f} img/s  peak {peak}  "
              f"speed vs defaults {ratio}  loss {'finite' if r.finite else 'NOT FINITE'}{compiled}")
    return all(not r.error and r.finite for r in rows)


def loader_lines(args, scale, res: dict, device) -> bool:
    batch = args.batch.get("standard", scale["batch"])
    try:
        secs = probes.loader_seconds(batch, max(2, min(args.steps, 50)), device, args.workers)
    except Exception as exc:  # noqa: BLE001
        print(f"data loader FAILED: {one_line(exc)}")
        return False
    step = res.get(("standard", "off"))
    for name, s in secs.items():
        share = (f", {100 * s / (s + step.seconds / step.steps):.1f}% of a standard step (amp off)"
                 if step and not step.error else "")
        print(f"data loader ({name}): {1000 * s:.2f} ms/batch{share}")
    return True


# ------------------------------------------------------------------------------------- driver
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=None, help="most timed steps per run (default 200; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default 10; tiny 1)")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-time budget of the per-case runs")
    p.add_argument("--settings-budget-s", type=float, default=60.0,
                   help="wall-time budget of the settings comparison (torch.compile's compilation not counted)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"cases: {[c.name for c in CASES]}")
    p.add_argument("--tiny", action="store_true", help="tiny models, batch 4, 32 px, 2 steps (CPU smoke test)")
    p.add_argument("--amp", nargs="+", choices=AMP_MODES, default=list(AMP_MODES), help="AMP modes per case")
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
    if args.tiny:
        importlib.import_module("rkd.engine.precision").COMPILE_BACKEND = "aot_eager"
    return device


def header(args, device) -> str:
    if device.type == "cuda":
        dev = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cudnn "
               f"{torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        dev = f"CPU, {torch.get_num_threads()} thread(s)"
    return (f"torch {torch.__version__}, {dev}; {'tiny' if args.tiny else 'paper'} scale, amp {' '.join(args.amp)}, "
            f"<= {args.steps} timed steps after {args.warmup} warm-up, budget {args.budget_s:g} s + settings "
            f"{args.settings_budget_s:g} s")


def run_case(case: Case, args, scale, device, t_start, runs_left: int, res: dict) -> None:
    """Every AMP mode of one case into ``res``; skipped runs get no entry."""
    from rkd.engine.precision import backend_settings_kept

    if args.budget_s - (time.perf_counter() - t_start) <= 1.0:
        return
    try:
        torch.manual_seed(0)
        method = case.build(scale).to(device)
    except Exception as exc:  # noqa: BLE001 -- report and go on
        for amp in args.amp:
            res[(case.name, amp)] = Result(case.name, amp, error=f"build: {one_line(exc)}")
            print(fmt_result(res[(case.name, amp)]), flush=True)
        return
    for i, amp in enumerate(args.amp):
        left = args.budget_s - (time.perf_counter() - t_start)
        if left <= 1.0:
            return
        try:
            with backend_settings_kept():
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


def probe(name: str, fn, *args) -> bool:
    try:
        return bool(fn(*args))
    except Exception as exc:  # noqa: BLE001 -- report and go on
        print(f"{name} FAILED: {one_line(exc)}")
        return False


def main(argv=None) -> int:
    args, scale = parse(argv)
    device = preflight(args)
    t_start = time.perf_counter()
    print(header(args, device), flush=True)
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    res: dict = {}
    for i, case in enumerate(cases):
        run_case(case, args, scale, device, t_start, len(args.amp) * (len(cases) - i), res)
    skipped = [f"{c.name} amp={a}" for c in cases for a in args.amp if (c.name, a) not in res]
    print("\ncost ratios (ms/step over ms/step, same batch):", *ratio_lines(res, args.amp), sep="\n")
    print("AMP speed-up (ms/step off / mode):", *amp_lines(res, args.amp), sep="\n")
    if skipped:
        print(f"skipped (budget {args.budget_s:g} s spent): {', '.join(skipped)}")
    ok = not any(r.error for r in res.values())
    print()
    ok &= probe("settings", settings_table, args, scale, device)
    rkd_case = next(c for c in CASES if c.name == "robust_kd_joint")
    ok &= probe("agreement", probes.agreement, rkd_case.build, scale, device, min(32, scale["batch"]))
    print("resume and placement:")
    ok &= probe("resume", probes.resume, device)
    ok &= probe("placement", probes.placement, device)
    ok &= loader_lines(args, scale, res, device)
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
