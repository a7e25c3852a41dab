"""The content-addressed adversarial cache: keys, lossless checksummed store, PGD set builder."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from rkd.adversarial_cache import (
    CacheCorruptError,
    CacheIncompleteError,
    build_adversarial_set,
    cache_key,
    cached_adversarial_set,
    canonical_json,
    get_or_build,
    key_parts,
    load,
    ls,
    model_fingerprint,
    pgd_attack_spec,
    save,
    verify,
)
from rkd.adversarial_cache import build as build_mod
from rkd.data import make_synthetic
from rkd.models import create_model

EPS = 8 / 255
ATTACK = {"norm": "linf", "eps": EPS, "steps": 3}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=4, width=4, layers=[1, 1, 1, 1])


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(True, n_train=20, num_classes=4, image_size=16, seed=3)


@pytest.fixture(scope="module")
def built(model, data):
    """(adv, labels) of ATTACK with seed 1, built once for the module."""
    return build_adversarial_set(model, data, ATTACK, seed=1, batch_size=8)


class _Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


# ---- keys ------------------------------------------------------------------------------------
def test_key_is_stable_and_changes_with_every_part(model, data):
    fp = data.fingerprint()
    spec = pgd_attack_spec(ATTACK)
    k = cache_key(model, spec, fp, 0)
    assert len(k) == 64 and int(k, 16) >= 0
    assert cache_key(model, spec, fp, 0) == k
    assert cache_key(_model(0), spec, fp, 0) == k  # same seed -> same weights -> same key
    assert cache_key(model_fingerprint(model), spec, fp, 0) == k  # precomputed model hash

    other = _model(0)
    with torch.no_grad():
        p = next(iter(other.parameters()))
        p[(0,) * p.dim()] += 1e-3
    assert cache_key(other, spec, fp, 0) != k
    bn = _model(0)  # buffers (BatchNorm running stats) count too
    name = next(n for n, _ in bn.named_buffers() if n.endswith("running_mean"))
    with torch.no_grad():
        bn.get_buffer(name).add_(0.5)
    assert cache_key(bn, spec, fp, 0) != k

    assert cache_key(model, pgd_attack_spec({**ATTACK, "eps": 4 / 255}), fp, 0) != k
    assert cache_key(model, pgd_attack_spec({**ATTACK, "steps": 4}), fp, 0) != k
    assert cache_key(model, pgd_attack_spec({**ATTACK, "norm": "l2"}), fp, 0) != k
    assert cache_key(model, spec, make_synthetic(True, n_train=20, num_classes=4, image_size=16,
                                                 seed=4).fingerprint(), 0) != k
    assert cache_key(model, spec, fp, 1) != k


def test_key_changes_with_the_models_input_size(model, data):
    """The same weights at another input size (model.input_size: InputNormalize resizes) are
    another function with other adversarial examples: another key. Not resizing keeps the key."""
    from rkd.models.normalize import set_input_size

    fp, spec = data.fingerprint(), pgd_attack_spec(ATTACK)
    k = cache_key(model, spec, fp, 0)
    at_32, at_64 = set_input_size(_model(0), 32), set_input_size(_model(0), 64)
    assert model_fingerprint(at_32) == model_fingerprint(model)  # the size is not in the state dict
    keys = {k, cache_key(at_32, spec, fp, 0), cache_key(at_64, spec, fp, 0)}
    assert len(keys) == 3
    assert cache_key(set_input_size(_model(0), None), spec, fp, 0) == k


def test_attack_spec_is_canonical():
    a = pgd_attack_spec({"norm": "LINF", "eps": 1, "steps": 4})
    b = pgd_attack_spec({"attack": "pgd", "norm": "linf", "eps": 1.0, "steps": 4, "step_size": 2.5 / 4,
                         "random_start": True, "restarts": 1})
    assert a == b and canonical_json(a) == canonical_json(b)
    assert a["step_size"] == 0.625 and a["norm"] == "linf"
    # AttackConfig.attack_params() of a pgd attack is accepted
    from rkd.config.schema import AttackConfig
    cfg = AttackConfig(kind="pgd", eps=8 / 255, steps=40)
    assert pgd_attack_spec(cfg.attack_params())["steps"] == 40
    with pytest.raises(ValueError):
        pgd_attack_spec({"attack": "fgsm", "eps": 0.1, "steps": 1})
    with pytest.raises(TypeError):
        pgd_attack_spec({"eps": 0.1, "steps": 1, "espilon": 2})
    with pytest.raises(ValueError):
        pgd_attack_spec({"eps": 0.1, "steps": 1, "targeted": True})


def test_canonical_json_exact_floats_and_order():
    assert canonical_json({"b": 1, "a": (0.1, np.float32(0.5))}) == '{"a":[0.1,0.5],"b":1}'
    x = 8 / 255
    assert json.loads(canonical_json({"eps": x}))["eps"] == x  # round-trips exactly
    assert canonical_json({"eps": x}) != canonical_json({"eps": float(np.nextafter(x, 1))})
    with pytest.raises(ValueError):
        canonical_json({"eps": float("nan")})
    with pytest.raises(ValueError):
        key_parts("not-a-hash", {}, "fp", 0)
    with pytest.raises(TypeError):
        key_parts("0" * 64, {}, "fp", 1.5)  # seeds are ints


# ---- builder ---------------------------------------------------------------------------------
def test_build_within_eps_in_range_and_in_order(data, built):
    adv, labels = built
    clean, y = data.tensors()
    assert adv.dtype == torch.float32 and adv.device.type == "cpu" and adv.shape == clean.shape
    assert torch.equal(labels, y)
    assert (adv - clean).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert not torch.equal(adv, clean)


def test_build_ignores_augmentation_restores_mode_and_rng(model, data, built):
    shifted = data.with_transform(lambda x: (x + 0.5).clamp(0, 1))  # would move far outside eps
    model.train()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    adv, _ = build_adversarial_set(model, shifted, ATTACK, seed=1, batch_size=8)
    assert model.training
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(adv, built[0])  # deterministic, augmentation stripped, eval mode used
    model.eval()
    build_adversarial_set(model, data, {**ATTACK, "steps": 1}, seed=1, batch_size=8)
    assert not model.training
    model.train()
    assert not torch.equal(build_adversarial_set(model, data, {**ATTACK, "steps": 1}, seed=2, batch_size=8)[0],
                           build_adversarial_set(model, data, {**ATTACK, "steps": 1}, seed=1, batch_size=8)[0])


# ---- store -----------------------------------------------------------------------------------
def _cached(tmp_path, model, data, monkeypatch, built):
    """cached_adversarial_set with a counting builder that returns the module's prebuilt set."""
    counter = _Counting(lambda *a, **k: (built[0].clone(), built[1].clone()))
    monkeypatch.setattr(build_mod, "build_adversarial_set", counter)
    root = tmp_path / "cache"

    def call():
        return cached_adversarial_set(root, model, data, ATTACK, 1, batch_size=8)

    return root, counter, call


def test_second_call_is_bit_identical_and_does_not_rebuild(tmp_path, model, data, monkeypatch, built):
    root, counter, call = _cached(tmp_path, model, data, monkeypatch, built)
    adv1, y1 = call()
    assert counter.calls == 1
    adv2, y2 = call()
    assert counter.calls == 1
    assert torch.equal(adv1, adv2) and torch.equal(y1, y2) and torch.equal(adv2, built[0])
    assert adv2.dtype == torch.float32 and y2.dtype == torch.int64
    (entry,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert sorted(os.listdir(entry)) == ["adv.npy", "labels.npy", "meta.json"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name and meta["num_samples"] == 20 and meta["dtype"] == "float32"
    assert meta["key_parts"]["attack"]["batch_size"] == 8 and meta["key_parts"]["seed"] == 1
    assert set(meta["files"]) == {"adv.npy", "labels.npy"} and meta["generation_wall_time_s"] >= 0
    # lossless: the raw .npy holds exactly the float32 tensor
    assert np.array_equal(np.load(entry / "adv.npy"), built[0].numpy())
    # other settings -> another entry
    cached_adversarial_set(root, model, data, ATTACK, 2, batch_size=8)
    assert counter.calls == 2


def test_real_builder_round_trip(tmp_path, model, data, built):
    adv, labels = cached_adversarial_set(tmp_path, model, data, ATTACK, 1, batch_size=8)
    assert torch.equal(adv, built[0])
    key = ls(tmp_path)[0]["key"]
    adv2, labels2 = load(tmp_path, key)
    assert torch.equal(adv2, adv) and torch.equal(labels2, labels)


def _only_entry(root):
    (entry,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return entry


def test_flipped_byte_is_detected_moved_aside_and_rebuilt(tmp_path, model, data, monkeypatch, built):
    root, counter, call = _cached(tmp_path, model, data, monkeypatch, built)
    call()
    entry = _only_entry(root)
    path = entry / "adv.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="checksum"):
        load(root, entry.name)
    assert isinstance(CacheCorruptError("0" * 64, "x"), ValueError)
    ((key, ok, msg),) = verify(root)
    assert key == entry.name and not ok and "checksum" in msg
    assert ls(root)[0]["valid"] is False
    with pytest.warns(UserWarning, match="corrupt"):
        adv, _ = call()
    assert counter.calls == 2
    assert torch.equal(adv, built[0])
    quarantined = list((root / ".corrupt").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(entry.name)
    assert (quarantined[0] / "adv.npy").read_bytes() == bytes(raw)  # kept for inspection
    assert verify(root) == [(entry.name, True, "ok")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()  # now valid: no warning, no rebuild
    assert counter.calls == 2


@pytest.mark.parametrize("name", ["adv.npy", "labels.npy"])
def test_truncated_file_is_detected(tmp_path, model, data, monkeypatch, built, name):
    root, counter, call = _cached(tmp_path, model, data, monkeypatch, built)
    call()
    entry = _only_entry(root)
    path = entry / name
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    with pytest.raises(CacheCorruptError, match="truncated"):
        load(root, entry.name)
    ((key, ok, msg),) = verify(root, entry.name)
    assert key == entry.name and not ok and "truncated" in msg
    with pytest.warns(UserWarning):
        call()
    assert counter.calls == 2 and verify(root, entry.name)[0][1]


def test_missing_meta_is_not_a_valid_entry(tmp_path, model, data, monkeypatch, built):
    root, counter, call = _cached(tmp_path, model, data, monkeypatch, built)
    call()
    entry = _only_entry(root)
    (entry / "meta.json").unlink()
    with pytest.raises(CacheIncompleteError, match="meta.json"):
        load(root, entry.name)
    row = ls(root)[0]
    assert row["key"] == entry.name and row["valid"] is False
    with pytest.warns(UserWarning, match="meta.json"):
        call()
    assert counter.calls == 2 and ls(root)[0]["valid"] is True


def test_get_or_build_plain_and_store_rules(tmp_path, built):
    key = "ab" * 32
    assert load(tmp_path, key) is None
    assert verify(tmp_path, key) == [(key, False, "no such entry")]
    counter = _Counting(lambda: built)
    a1, _ = get_or_build(tmp_path, key, counter, info={"note": "x"})
    a2, _ = get_or_build(tmp_path, key, counter)
    assert counter.calls == 1 and torch.equal(a1, a2)
    # a staging directory (an interrupted write) is ignored
    (tmp_path / ".staging-abc").mkdir()
    (tmp_path / ".staging-abc" / "adv.npy").write_bytes(b"junk")
    assert [r["key"] for r in ls(tmp_path)] == [key]
    with pytest.raises(TypeError):
        save(tmp_path, "cd" * 32, built[0].double(), built[1])  # never silently lossy
    with pytest.raises(ValueError):
        load(tmp_path, "../etc")


def test_concurrent_requests_for_one_set_build_it_once(tmp_path, built):
    """Two rows of a table asking for the same one-time set at once: one builds, the other waits
    for it and loads what was saved (the same tensors), instead of building it again."""
    import threading
    import time

    key, started = "ef" * 32, threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        return built

    first, second = _Counting(slow), _Counting(lambda: built)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("first", get_or_build(tmp_path, key, first)))
    t.start()
    started.wait(5)
    out["second"] = get_or_build(tmp_path, key, second)  # asks while the first is building
    t.join()
    assert (first.calls, second.calls) == (1, 0)
    assert torch.equal(out["first"][0], out["second"][0]) and torch.equal(out["first"][1], out["second"][1])
    assert [r["key"] for r in ls(tmp_path)] == [key]  # the lock file is not an entry


def test_ls_and_verify_report_entries(tmp_path, model, data, monkeypatch, built):
    root, counter, call = _cached(tmp_path, model, data, monkeypatch, built)
    call()
    cached_adversarial_set(root, model, data, {**ATTACK, "eps": 4 / 255}, 1, batch_size=8)
    rows = ls(root)
    assert len(rows) == 2 and all(r["valid"] is True for r in rows)
    assert sorted(r["attack"]["eps"] for r in rows) == sorted([EPS, 4 / 255])
    for r in rows:
        assert r["num_samples"] == 20 and r["shape"] == [20, 3, 16, 16] and r["seed"] == 1
        assert r["size_bytes"] > 20 * 3 * 16 * 16 * 4 and r["created"]
        assert r["dataset_fingerprint"] == data.fingerprint()
    assert [ok for _, ok, _ in verify(root)] == [True, True]
    assert ls(root, check=False)[0]["valid"] is None
    key = rows[0]["key"]
    assert verify(root, key[:16]) == [(key, True, "ok")]  # the short key `rkd cache ls` prints
    with pytest.raises(ValueError, match="no entry"):
        verify(root, "0" * 15 if not key.startswith("0" * 15) else "f" * 15)
    with pytest.raises(ValueError, match="hex characters"):
        verify(root, "not-a-key")


def test_save_race_and_bad_meta(tmp_path, built):
    key = "cd" * 32
    d1 = save(tmp_path, key, *built)
    first = (d1 / "meta.json").read_text()
    d2 = save(tmp_path, key, built[0] + 0, built[1])  # a concurrent writer lost the race: keep existing
    assert d1 == d2 and (d1 / "meta.json").read_text() == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]
    # unreadable meta.json and tampered key parts are corruption, not "missing"
    (d1 / "meta.json").write_text("{not json")
    with pytest.raises(CacheCorruptError, match="unreadable"):
        load(tmp_path, key)
    save(tmp_path, key, *built)  # an invalid existing entry is moved aside and replaced
    assert verify(tmp_path, key) == [(key, True, "ok")] and len(list((tmp_path / ".corrupt").iterdir())) == 1
    meta = json.loads((d1 / "meta.json").read_text())
    meta["key_parts"] = {"seed": 0}
    (d1 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheCorruptError, match="key_parts"):
        load(tmp_path, key)


def test_cached_attack_set_any_kind_is_reused_and_keyed_by_attack(tmp_path, model, data, monkeypatch):
    from rkd.adversarial_cache import cached_attack_set

    calls = []
    real = build_mod.run_attack_over
    monkeypatch.setattr(build_mod, "run_attack_over", lambda *a, **k: calls.append(1) or real(*a, **k))
    a1, l1, k1 = cached_attack_set(tmp_path, model, data, "fgsm", {"eps": 8 / 255}, 0, batch_size=8, return_key=True)
    a2, l2, k2 = cached_attack_set(tmp_path, model, data, "fgsm", {"eps": 8 / 255}, 0, batch_size=8, return_key=True)
    assert len(calls) == 1 and k1 == k2 and torch.equal(a1, a2) and torch.equal(l1, l2)
    clean = data.tensors()[0]
    assert (a1 - clean).abs().max() <= 8 / 255 + 1e-6 and a1.min() >= 0 and a1.max() <= 1
    _, _, k3 = cached_attack_set(tmp_path, model, data, "fgsm", {"eps": 4 / 255}, 0, batch_size=8, return_key=True)
    assert k3 != k1 and len(calls) == 2
    # PGD through this entry point shares the PGD cache entries
    _, _, kp = cached_attack_set(tmp_path, model, data, "pgd", {"norm": "linf", "eps": 8 / 255, "steps": 2}, 0,
                                 batch_size=8, return_key=True)
    from rkd.adversarial_cache import cached_adversarial_set

    _, _, kq = cached_adversarial_set(tmp_path, model, data, {"norm": "linf", "eps": 8 / 255, "steps": 2}, 0,
                                      batch_size=8, return_key=True)
    assert kp == kq
