"""benchmarks/gpu_check.py in its reduced CPU mode, so the prepared GPU check cannot rot before
a GPU machine runs it: every case runs a real training step under each AMP mode, and every
probe (settings, Robust-KD's gradient agreement, resume, placement, loaders) runs and passes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CASES = ("standard", "robust_kd_ps", "robust_kd_joint", "shafahi", "at_wrn", "trades_wrn", "mae", "std_224",
         "macd", "at_224")
SETTINGS = ("rkd defaults", "no channels-last", "no TF32", "no cudnn.benchmark", "no fused optimiser", "+ bf16 AMP",
            "+ torch.compile")


def test_every_case_and_probe_runs_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    row = r"^(\w+)\s+amp=(\w+)\s+\d+ steps.*loss (finite|NOT FINITE)"
    rows = {(m[1], m[2]): m[3] for m in re.finditer(row, out, re.M)}
    assert set(rows) == {(c, a) for c in CASES for a in ("off", "bf16", "fp16")}
    # finite everywhere but Robust-KD under fp16, whose double backward rkd refuses to run in AMP
    assert {k for k, v in rows.items() if v != "finite"} <= {("robust_kd_ps", "fp16"), ("robust_kd_joint", "fp16")}
    for line in ("Robust-KD per_stage / standard", "MACD / AT (ResNet-50, 224 px)", "AMP speed-up"):
        assert line in out
    settings = re.findall(r"^  (.+?)\s+[\d.]+ ms/step .* loss finite", out, re.M)
    assert tuple(settings) == SETTINGS and "(compilation" in out
    agreement = dict(re.findall(r"^  (tf32|bf16|fp16) .*?\s+(cosine [\d.]+|NOT FINITE)", out, re.M))
    assert agreement["tf32"] == "cosine 1.0000"  # no TF32 on a CPU: the fp32 gradients themselves
    assert len(re.findall(r"^  resume .*: ok \(epoch 2, loss finite\)$", out, re.M)) == 3
    assert re.search(r"granted no GPU -> cpu, granted one -> cuda: ok", out)
    assert re.search(r"data loader \(host\): [\d.]+ ms/batch", out) and "data loader (device)" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_cannot_start():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--tiny"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA" in proc.stdout + proc.stderr
