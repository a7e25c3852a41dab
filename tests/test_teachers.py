"""Teachers given by a config are trained once, cached by the hash of their weight-relevant
config, verified on reuse, moved aside when corrupt, and recorded in the student's results."""

from __future__ import annotations

import datetime as real_datetime
import json
import shutil
import types
import warnings
from pathlib import Path

import pytest
import torch

import rkd.experiment.model_cache
import rkd.experiment.pipeline
from rkd.config import load_config
from rkd.config.schema import TeacherConfig
from rkd.engine import verified_torch_load
from rkd.teachers import cached_teacher_dir, ensure_teacher, load_teacher, teacher_config, teacher_key


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: intra-op threads only add synchronisation (on a busy 2-core machine a
    teacher took 13 s with 2 threads and 0.3 s with one)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _teacher_overrides(tiny_overrides, *extra):
    # digits_standard trains on half of the data and evaluates with JSMA/CW: drop both; no
    # MLflow for the teacher (tracking is not part of the cache key, and a store costs seconds)
    return [*tiny_overrides, "data.half=null", "eval.enabled=false", "tracking.enabled=false", *extra]


def _spec(tiny_overrides, tmp_path, *extra) -> TeacherConfig:
    return TeacherConfig(config="preset:digits_standard", overrides=_teacher_overrides(tiny_overrides, *extra),
                         cache_dir=str(tmp_path / "teachers"))


def _forbid_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(rkd.experiment, "run_experiment", boom)


def test_teacher_is_trained_once_and_reused(tiny_overrides, tmp_path, monkeypatch):
    """First call trains the teacher into <cache>/<name>-<key12>/ as a FINISHED run; the second
    call (a new spec object, same config) loads it: same directory, trained_now False, and
    model.pt untouched -- run_experiment is not even called."""
    spec = _spec(tiny_overrides, tmp_path)
    first = ensure_teacher(spec)
    assert first.trained_now
    cfg = teacher_config(spec)
    assert first.key == teacher_key(cfg)
    assert first.run_dir == tmp_path / "teachers" / f"{cfg.name}-{first.key[:12]}" == cached_teacher_dir(spec)
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "FINISHED"
    model_pt = first.run_dir / "model.pt"
    mtime = model_pt.stat().st_mtime_ns

    _forbid_training(monkeypatch)
    second = ensure_teacher(_spec(tiny_overrides, tmp_path))
    assert not second.trained_now and second.run_dir == first.run_dir and second.key == first.key
    assert model_pt.stat().st_mtime_ns == mtime

    net, run = load_teacher(spec)  # the network with the cached weights, eval mode
    assert not run.trained_now and not net.training
    saved = verified_torch_load(model_pt)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


def test_teacher_key_tracks_weight_relevant_keys_only(tiny_overrides):
    """The key changes with what changes the weights (lr, seed, width, data) and not with where
    or how the run is tracked, evaluated, displayed or which device runs it; equal numbers in
    other notations (5e-2, 1/20) give the same key."""
    base = _teacher_overrides(tiny_overrides)
    key = lambda *extra: teacher_key(load_config("preset:digits_standard", base + list(extra)))  # noqa: E731
    k0 = key()
    assert len(k0) == 64 and k0 == key()
    for changed in (["train.lr=0.01"], ["seed=1"], ["model.width=8"], ["data.limit_train=32"],
                    ["method.temperature=5"]):
        assert key(*changed) != k0, changed
    for same in (["tracking.experiment=other", "tracking.enabled=true"], ["eval.enabled=true"],
                 ["eval.attacks=[]", "eval.max_samples=8"], ["device=cpu"], ["output_dir=/elsewhere"],
                 ["train.progress=bar"], ["train.lr=5e-2"], ["train.lr=1/20"]):
        assert key(*same) == k0, same


def test_corrupt_teacher_weights_are_moved_aside_and_retrained(tiny_overrides, tmp_path):
    """A model.pt whose checksum no longer matches (one flipped byte) is not loaded: the run is
    moved to <dir>.stale-<time> with a warning and the teacher is trained again."""
    spec = _spec(tiny_overrides, tmp_path)
    run_dir = ensure_teacher(spec).run_dir
    model_pt = run_dir / "model.pt"
    data = bytearray(model_pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_pt.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match="unusable"):
        again = ensure_teacher(spec)
    assert again.trained_now and again.run_dir == run_dir
    stale = list(run_dir.parent.glob(f"{run_dir.name}.stale-*"))
    assert len(stale) == 1 and (stale[0] / "model.pt").read_bytes() == bytes(data)  # kept for inspection
    verified_torch_load(run_dir / "model.pt")  # the new weights verify
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ensure_teacher(spec).trained_now  # and are reused without complaint


def test_unfinished_teacher_without_checkpoints_is_moved_aside(tiny_overrides, tmp_path):
    """A run that died before its first checkpoint cannot be resumed: it is moved aside (with a
    warning naming its status) and trained from scratch."""
    spec = _spec(tiny_overrides, tmp_path)
    run_dir = cached_teacher_dir(spec)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "FAILED"}))
    with pytest.warns(UserWarning, match="FAILED"):
        run = ensure_teacher(spec)
    assert run.trained_now and (run_dir / "model.pt").is_file()
    assert len(list(run_dir.parent.glob(f"{run_dir.name}.stale-*"))) == 1


def test_interrupted_teacher_is_resumed_not_restarted(tiny_overrides, tmp_path, monkeypatch):
    """A teacher with checkpoints that did not finish is resumed (resume=True into the same
    directory), nothing is moved aside."""
    spec = _spec(tiny_overrides, tmp_path)
    run_dir = ensure_teacher(spec).run_dir
    (run_dir / "model.pt").unlink()
    (run_dir / "run.json").write_text(json.dumps({"status": "RUNNING"}))
    calls = []
    real = rkd.experiment.pipeline.run_experiment
    monkeypatch.setattr(rkd.experiment.pipeline, "run_experiment",
                        lambda cfg, place=None, **kw: calls.append(place) or real(cfg, place, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular: no "moved aside" warning
        run = ensure_teacher(spec)
    assert run.trained_now and calls and calls[0].resume is True and calls[0].run_dir == run_dir
    assert not list(run_dir.parent.glob("*.stale-*"))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "FINISHED"
    verified_torch_load(run_dir / "model.pt")


def test_two_move_asides_in_one_second_do_not_collide(tiny_overrides, tmp_path, monkeypatch):
    """Two broken teacher runs moved aside within the same second (e.g. quick successive
    failures) must both be kept and the teacher trained again, not crash on the name."""
    fixed = real_datetime.datetime(2024, 1, 1, 12, 0, 0)
    fake_dt = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda *a, **k: fixed))
    monkeypatch.setattr(rkd.experiment.model_cache, "_dt", fake_dt)  # a frozen clock: both moves in "one second"
    spec = _spec(tiny_overrides, tmp_path)
    run_dir = cached_teacher_dir(spec)
    for _ in range(2):
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"status": "FAILED"}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert ensure_teacher(spec).trained_now
        assert any("FAILED" in str(w.message) for w in caught)
        shutil.rmtree(run_dir)  # start the second round from a broken run again
    assert len(list(run_dir.parent.glob(f"{run_dir.name}.stale-*"))) == 2


def test_robust_kd_student_records_its_cached_teacher(tiny_overrides, tmp_path):
    """End to end: a Robust-KD student names a teacher config; the teacher is trained into the
    cache, the student (1 epoch, gamma 1) finishes with finite losses, and its results.json and
    run.json point at the cached teacher directory and key."""
    from rkd.experiment import run_experiment

    teacher_over = _teacher_overrides(tiny_overrides)
    cfg = load_config(None, tiny_overrides + [
        "name=student", "method.name=robust_kd", "method.teacher.config=preset:digits_standard",
        "method.teacher.overrides=" + json.dumps(teacher_over), f"method.teacher.cache_dir={tmp_path / 'teachers'}",
        "method.gamma=1.0", "method.beta=1.0", "train.epochs=1",
        "eval.attacks=[{kind: fgsm, eps: 0.03}]", "eval.max_samples=8",
    ])
    out = run_experiment(cfg, run_dir=tmp_path / "student")
    teacher_dir = cached_teacher_dir(cfg.method.teacher)
    assert (teacher_dir / "model.pt").is_file()

    results = json.loads((out.run_dir / "results.json").read_text())
    entry = results["run"]["teacher"]
    assert Path(entry["run_dir"]) == teacher_dir
    assert entry["key"] == teacher_key(teacher_config(cfg.method.teacher)) and entry["name"] == "digits-standard"
    assert json.loads((out.run_dir / "run.json").read_text())["teacher"] == entry
    assert results["run"]["method"] == "robust_kd" and results["attacks"][0]["kind"] == "fgsm"
    (epoch,) = out.history  # one epoch, with every Robust-KD term logged and finite
    for term in ("train_loss", "train_ce", "train_fm", "train_jacobian"):
        assert torch.isfinite(torch.tensor(epoch[term])), term
    assert epoch["train_jacobian"] > 0
