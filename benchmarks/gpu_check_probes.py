"""The GPU check's probes beside the per-method step timings (benchmarks/gpu_check.py):

* ``settings``: the speed of each setting on the standard case, side by side -- rkd's GPU
  defaults (channels-last, TF32, cudnn.benchmark, fused optimiser), each one turned off alone,
  then torch.compile and bf16 AMP added; ms/step, images/s, peak memory, ratio to the defaults.
* ``agreement``: Robust-KD's parameter gradients (one step, same weights, batch and
  projections) under TF32, bf16 and fp16 autocast against fp32: cosine, relative error, the
  Jacobian term, finiteness. The reason rkd keeps that method in fp32.
* ``resume``: the real Trainer saved and resumed across devices, AMP modes and GPU counts: a CUDA
  fp16 checkpoint (scaler state, CUDA RNG) resumed on CPU without AMP, a CPU checkpoint resumed on
  CUDA with fp16 AMP, and a checkpoint that lists more CUDA RNG states than this process sees.
* ``placement``: ``device: auto`` for a process a scheduler placed (a zero-GPU Tune trial) on a
  machine whose GPUs it can see.
* ``loader``: the host DataLoader (pinned memory) against the GPU-resident DeviceLoader, ms per
  batch and their share of a standard step.

Each probe prints its own lines and returns whether it passed; none needs ray or mlflow.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- agreement
def flat_grads(method) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).float() for p in method.trainable_parameters() if p.grad is not None])


def robust_kd_gradients(method, batch, mode: str, device) -> tuple[torch.Tensor, dict]:
    """One Robust-KD loss and backward under ``mode`` (fp32 | tf32 | bf16 | fp16), no update."""
    from rkd.engine.precision import apply_backend_settings, backend_settings_kept

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    with backend_settings_kept():
        apply_backend_settings(tf32=mode == "tf32", cudnn_benchmark=False)
        torch.manual_seed(0)  # the same random projections in every mode
        method.zero_grad(set_to_none=True)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
        with ctx:
            out = method.training_step(*batch)
        out.loss.backward()
        sync(device)
    return flat_grads(method), {k: float(v.float()) for k, v in out.terms.items()}


def agreement(build, scale: dict, device, batch_size: int) -> bool:
    """Print each mode's gradient agreement with fp32; True if fp32 itself was finite."""
    torch.manual_seed(0)
    method = build(scale).to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (batch_size,), generator=g).to(device))
    ref, ref_terms = robust_kd_gradients(method, batch, "fp32", device)
    print(f"Robust-KD gradients vs fp32 (batch {batch_size}; fp32 jacobian={ref_terms.get('jacobian', math.nan):.4g},"
          f" loss={ref_terms['loss']:.4g}):")
    for mode in ("tf32", "bf16", "fp16"):
        grads, terms = robust_kd_gradients(method, batch, mode, device)
        finite = bool(grads.isfinite().all())
        if finite:
            cos = float(torch.nn.functional.cosine_similarity(grads, ref, dim=0))
            rel = float((grads - ref).norm() / ref.norm().clamp_min(1e-30))
            cells = f"cosine {cos:.4f}  relative error {rel:.3g}"
        else:
            cells = f"NOT FINITE ({int((~grads.isfinite()).sum())} of {grads.numel()} entries)"
        label = {"fp16": "fp16 (no loss scale)"}.get(mode, mode)
        print(f"  {label:<20} {cells}  jacobian={terms.get('jacobian', math.nan):.4g}  loss={terms['loss']:.4g}")
    return bool(ref.isfinite().all())


# ------------------------------------------------------------------------------------- resume
def tiny_trainer(device, amp, epochs: int):
    from rkd.config.schema import TrainConfig
    from rkd.data import make_synthetic
    from rkd.engine import Trainer
    from rkd.methods import StandardTraining
    from rkd.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=8, layers=[1, 1, 1, 1])
    cfg = TrainConfig(epochs=epochs, warmup_epochs=0, progress="none", amp=amp)
    return Trainer(StandardTraining(model), make_synthetic(True, n_train=32, seed=0), cfg, batch_size=16,
                   device=device)


def resume_once(save_on, save_amp, load_on, load_amp, extra_cuda_states: int = 0) -> str:
    """Train 1 epoch on ``save_on``, checkpoint, resume on ``load_on`` for a 2nd; '' or the error."""
    from rkd.engine.checkpoint import atomic_torch_save, verified_torch_load

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        first = tiny_trainer(save_on, save_amp, 1)
        first.fit()
        first.save_checkpoint(path)
        if extra_cuda_states:
            state = verified_torch_load(path, map_location="cpu")
            cuda = list(state["rng"].get("cuda", [])) or [torch.zeros(16, dtype=torch.uint8)]
            state["rng"]["cuda"] = cuda + [cuda[0].clone() for _ in range(extra_cuda_states)]
            atomic_torch_save(state, path)
        second = tiny_trainer(load_on, load_amp, 2)
        try:
            second.resume(path)
            loss = second.fit()[-1]["train_loss"]
        except Exception as exc:  # noqa: BLE001 -- the probe reports it
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if second.start_epoch != 2 or not math.isfinite(loss):
            return f"resumed to epoch {second.start_epoch}, loss {loss}"
    return ""


def resume(device) -> bool:
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    cases = [(f"{device.type} fp16 -> cpu fp32", (device, "fp16", "cpu", False, 0)),
             (f"cpu fp32 -> {device.type} fp16", ("cpu", False, device, "fp16", 0)),
             (f"{device.type}: CUDA RNG of {n + 3} devices, this process sees {n}", (device, False, device, False, 3))]
    ok = True
    for label, args in cases:
        error = resume_once(*args)
        ok &= not error
        print(f"  resume {label}: {'ok (epoch 2, loss finite)' if not error else 'FAILED: ' + error}")
    return ok


# ---------------------------------------------------------------------------------- placement
def placement(device) -> bool:
    from rkd.engine.device import device_for_grant, resolve_device

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    none, one = device_for_grant("auto", []), device_for_grant("auto", [0])
    torch.zeros(1, device=none)  # the chosen devices exist
    ok = none == "cpu" and one == "cuda"
    print(f"  placement: {visible} GPU(s) visible, plain auto -> {resolve_device('auto').type}; a trial granted no "
          f"GPU -> {none}, granted one -> {one}: {'ok' if ok else 'WRONG'}")
    return ok


# ------------------------------------------------------------------------------------- loader
def loader_seconds(batch: int, n_batches: int, device, workers: int) -> dict[str, float]:
    """Seconds per batch, to ``device``: the Trainer's host loader and the DeviceLoader."""
    from rkd.data.arrays import TensorImageDataset
    from rkd.data.device_loader import DeviceLoader
    from rkd.data.loader import make_loader
    from rkd.data.transforms import train_transform
    from rkd.engine.sampler import EpochShuffleSampler

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * n_batches, 3, 32, 32), dtype=torch.uint8, generator=g)
    ds = TensorImageDataset(images, torch.arange(batch * n_batches) % 10, transform=train_transform(flip=True))
    sampler = EpochShuffleSampler(len(ds))
    loaders = {"host": make_loader(ds, batch, sampler=sampler, num_workers=workers,
                                   pin_memory=device.type == "cuda"),
               "device": DeviceLoader(ds, batch, sampler=sampler, device=device)}
    out = {}
    for name, loader in loaders.items():
        sync(device)
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            seen += 1
        sync(device)
        out[name] = (time.perf_counter() - t0) / max(seen, 1)
    return out
