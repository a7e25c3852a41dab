"""benchmarks/gpu_check.py in its reduced CPU mode, so the prepared GPU check cannot rot before
a GPU machine runs it: every case runs a real training step with AMP off and on."""

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


def test_every_case_runs_a_finite_step_with_amp_off_and_on():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {(m[1], m[2]): m[3] for m in re.finditer(r"^(\w+)\s+amp=(on|off)\s+\d+ steps.*loss (\w+)", proc.stdout,
                                                   re.M)}
    assert rows == {(c, a): "finite" for c in CASES for a in ("off", "on")}
    for line in ("Robust-KD per_stage / standard", "MACD / AT (ResNet-50, 224 px)", "data-loader share"):
        assert line in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_cannot_start():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--tiny"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA" in proc.stdout + proc.stderr
