"""`--smoke` (rkd.config.smoke): every stage of a chain rewritten to a few steps at its real
architecture, and real smoke runs of the paper-scale configs in jobs/ on tiny datasets written
in the real formats (CIFAR-10/100 pickles, SVHN .mat, ImageNet32 npz).

CI runs one config per method and architecture (SMOKE_CI); `make smoke` runs every config in
jobs/ (`pytest -m smoke_all`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import write_cifar10, write_cifar100, write_imagenet32, write_svhn

from rkd.config import load_config
from rkd.config.smoke import SMOKE, smoke_config

ROOT = Path(__file__).resolve().parents[1]
ALL_JOBS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jobs").rglob("*.yaml") if p.name != "base.yaml"
                  and not p.name.endswith("_base.yaml"))
#: one config per method and architecture of jobs/ (and each real dataset format)
SMOKE_CI = [
    "jobs/cifar10/robust_kd.yaml",                     # Robust-KD, ResNet-50; CIFAR-10 + ImageNet32 AT teacher
    "jobs/svhn/robust_kd_cifar100.yaml",               # SVHN .mat, CIFAR-100 AT teacher
    "jobs/cifar10/shafahi.yaml",                       # Shafahi GAP-L2
    "jobs/cifar10/trades.yaml",                        # TRADES, WRN
    "jobs/cifar10/defensive_distillation/student_t20.yaml",  # DD teacher + student
    "jobs/macd/cifar10_resnet50/macd.yaml",            # MAE ViT stages, one-time set, MACD at 224 px
]


def _chain(cfg):
    """Every config of ``cfg``'s chain, loaded as the run will load it."""
    found = [cfg]
    for spec in cfg.trained_models().values():
        if spec.config is not None:
            found += _chain(load_config(spec.config, list(spec.overrides)))
    return found


def test_every_stage_of_a_chain_is_smoked_at_its_real_architecture(tmp_path):
    real = load_config("jobs/macd/cifar10_resnet50/macd.yaml")
    smoked = smoke_config(real, str(tmp_path), load_config)
    real_chain, chain = _chain(real), _chain(smoked)
    assert len(chain) == len(real_chain) >= 3  # MACD, its MAE feature stage, MAE pretraining, the source
    for before, after in zip(real_chain, chain):
        assert after.model == before.model and after.method.name == before.method.name
        assert after.train.epochs == 1 and after.train.warmup_epochs == 0 and not after.train.milestones
        assert after.data.limit_train <= SMOKE.train and after.data.batch_size <= SMOKE.batch
        assert after.data.dataset == before.data.dataset and after.output_dir == str(tmp_path)
        assert not after.tracking.enabled and after.eval.max_samples <= SMOKE.eval
        suite = after.eval.worst_case.suite
        assert isinstance(suite, list) and all((a.steps or 0) <= SMOKE.steps for a in suite)
        assert all(a.steps is None or a.steps <= SMOKE.steps for a in after.eval.attacks)
    assert all(s.cache_dir is None for s in smoked.trained_models().values())


def test_a_step_schedule_becomes_one_constant_epoch():
    teacher = load_config("jobs/teachers/imagenet32.yaml")
    assert teacher.train.schedule == "step" and teacher.train.milestones
    smoked = smoke_config(teacher, "out", load_config)
    assert (smoked.train.schedule, smoked.train.milestones, smoked.train.epochs) == ("constant", [], 1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Tiny CIFAR-10, CIFAR-100, SVHN and ImageNet32 files in their real formats, in one root."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, n_per_batch=4)
    write_cifar100(root, n=12)
    for split in ("train", "test"):
        write_svhn(root, split)
    write_imagenet32(root, batches=range(1, 11), n=2)
    return root


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """torch's hub cache with torchvision's pretrained ResNet-50 / WRN-50-2 files (random weights
    in the real format, under the names torchvision looks for): MACD's jobs start from them."""
    import torch
    import torchvision

    from rkd.models.torchvision_adapters import PRETRAINED

    home = tmp_path_factory.mktemp("torch_home")
    for arch, weights in PRETRAINED.items():
        ctor = {"tv_resnet50": torchvision.models.resnet50, "tv_wide_resnet50_2": torchvision.models.wide_resnet50_2}
        target = home / "hub" / "checkpoints" / weights.DEFAULT.url.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ctor[arch](weights=None).state_dict(), target)
    return home


def smoke(config: str, root: Path, cwd: Path, torch_home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rkd.cli", "train", str(ROOT / config), f"data.root={root}",
                           "data.verify=false", "device=cpu", "--smoke", "--run-dir", str(cwd / "smoke")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "TORCH_HOME": str(torch_home)})


def _passes(config, datasets, tmp_path, torch_home):
    proc = smoke(config, datasets, tmp_path, torch_home)
    assert proc.returncode == 0, f"{config}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "passed in" in proc.stdout
    assert json.loads((tmp_path / "smoke" / "run" / "run.json").read_text())["status"] == "FINISHED"
    # a passed smoke's outputs are thrown away: a chain at paper scale writes hundreds of MB
    # (ViT-B checkpoints), and the 196 configs of `make smoke` filled 53 GB of pytest's tmp before
    shutil.rmtree(tmp_path / "smoke", ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.parametrize("config", SMOKE_CI)
def test_smoke_of_each_method_and_architecture(config, datasets, tmp_path, torch_home):
    _passes(config, datasets, tmp_path, torch_home)


@pytest.mark.e2e
@pytest.mark.smoke_all
@pytest.mark.parametrize("config", ALL_JOBS)
def test_smoke_of_every_job_config(config, datasets, tmp_path, torch_home):
    _passes(config, datasets, tmp_path, torch_home)


@pytest.mark.e2e
def test_tune_smoke_runs_the_trials_chain_once_without_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rkd.cli", "tune", str(ROOT / "tune_spaces" / "shafahi.yaml"),
                           "--smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke run of" in proc.stdout and "passed in" in proc.stdout and '{"method.lam"' in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # untracked, throwaway
