"""Bad input and unusable surroundings found before any work, each as one clear line: an
unreachable or unwritable tracking store, a device that is not there, duplicate or empty YAML,
a short cache key; `--debug` shows the traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from rkd.config import ConfigError, load_config
from rkd.config.schema import TrackingConfig
from rkd.engine.device import resolve_device
from rkd.tracking import TrackingUnreachable, check_tracking


def rkd(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rkd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_an_unreachable_tracking_server_is_refused_in_seconds(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable, match=r"http://127.0.0.1:9 did not answer.*tracking.enabled=false"):
        check_tracking(TrackingConfig(tracking_uri="http://127.0.0.1:9"), timeout=2)
    assert time.monotonic() - t0 < 10
    check_tracking(TrackingConfig(tracking_uri="http://127.0.0.1:9", enabled=False))  # not asked when off


def test_a_local_store_needs_a_writable_folder(tmp_path):
    check_tracking(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    with pytest.raises(TrackingUnreachable, match="does not exist"):
        check_tracking(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_that_is_not_there_is_a_config_error():
    with pytest.raises(ConfigError, match="cuda: no CUDA device is visible"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"


def test_an_output_folder_that_cannot_be_written_or_has_no_room_is_refused_before_work(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    from rkd.cli import user_error_code
    from rkd.experiment.run_dir import OutputFolderError, require_writable

    require_writable(tmp_path / "new" / "runs")  # created
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match=r"a-file/runs cannot be written .*output_dir=DIR") as err:
        require_writable(blocker / "runs")  # (as root, permission bits do not stop a write; a file does)
    assert user_error_code(err.value) == 1
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(OutputFolderError, match=r"1 MiB free on its disk, at least 256 MiB needed"):
        require_writable(tmp_path)
    assert user_error_code(OSError(errno.ENOSPC, "No space left on device")) == 1  # filled up mid-run
    assert user_error_code(OSError(errno.EIO, "I/O error")) is None  # not the user's to fix: a traceback


@pytest.mark.e2e
def test_rkd_train_into_an_unwritable_folder_is_one_line_before_any_work(tmp_path, tiny_overrides):
    (tmp_path / "a-file").write_text("x")
    over = [o for o in tiny_overrides if not o.startswith("output_dir")]
    proc = rkd("train", "preset:digits_standard", *over, f"output_dir={tmp_path / 'a-file' / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("rkd: output folder") and "epoch" not in proc.stderr


def test_duplicate_keys_and_empty_files_are_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\ntrain:\n  lr: 0.1\n  epochs: 3\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"key 'lr' given twice \(lines 3 and 5\)") as err:
        load_config(str(dup))
    assert str(dup) in str(err.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(str(empty))


@pytest.mark.e2e
def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    bad = ["train", "preset:digits_standard", "tracking.tracking_uri=http://127.0.0.1:9", "train.epochs=2"]
    proc = rkd(*bad, cwd=tmp_path)
    assert proc.returncode == 2 and "did not answer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    debug = rkd("--debug", *bad, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "TrackingUnreachable" in debug.stderr
    short = rkd("cache", "verify", "--root", str(tmp_path), "abc123", cwd=tmp_path)
    assert short.returncode == 2 and "no entry" in short.stderr and "Traceback" not in short.stderr


def test_a_missing_dataset_anywhere_in_the_chain_fails_before_the_first_stage_trains(tmp_path, tiny_overrides):
    """The teacher's dataset is missing: nothing is trained, no teacher folder is made."""
    from rkd.data import DatasetNotFoundError
    from rkd.experiment import run_experiment

    cfg = load_config("preset:digits_robust_kd", [
        *tiny_overrides, f"method.teacher.overrides=[data.dataset=cifar10, 'data.root={tmp_path / 'none'}']"])
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        run_experiment(cfg, run_dir=tmp_path / "run")
    assert time.monotonic() - t0 < 30 and not (tmp_path / "runs" / "teachers").exists()


def test_pretrained_weights_neither_cached_nor_downloadable_are_named_before_work(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from rkd.experiment.chain_data import require_pretrained

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"tv_resnet50's ImageNet weights are not in torch's hub cache"):
        require_pretrained("tv_resnet50")
    from rkd.models.torchvision_adapters import pretrained_weights_file

    path, _ = pretrained_weights_file("tv_resnet50")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # present: no download is needed (its contents are checked when it is loaded)
    require_pretrained("tv_resnet50")
    require_pretrained("resnet18")  # not a pretrained architecture: nothing to check


def test_a_corrupt_run_record_is_named_not_a_traceback(tmp_path):
    from rkd.experiment.run_dir import RunRecordError, read_run_json, run_status

    (tmp_path / "run.json").write_text('{"status": "FINI')  # truncated
    with pytest.raises(RunRecordError, match=r"run.json is not valid JSON.*move .* aside"):
        read_run_json(tmp_path)
    assert run_status(tmp_path) is None  # the teacher cache reads it as "not finished"
    from rkd.config import save_config

    save_config(load_config("preset:digits_standard"), tmp_path / "config.yaml")
    proc = rkd("train", "--resume", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1 and "run.json is not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
