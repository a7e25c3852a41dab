"""On-disk store of adversarial sets: lossless, checksummed, written atomically.

Layout under a root directory::

    <root>/<key>/adv.npy       float32 (N, C, H, W) adversarial images, exact (never JPEG/uint8)
    <root>/<key>/labels.npy    int64 (N,) labels
    <root>/<key>/meta.json     written last: key, key parts, shapes, dtypes, created (UTC ISO),
                               generation wall time, and size + SHA-256 of each .npy file
    <root>/.staging-*/         entries being written (ignored by ls/verify/load)
    <root>/.corrupt/<key>-*/   corrupt entries moved aside by get_or_build (never deleted)

Atomicity: an entry is assembled in a staging directory inside ``root`` (each file written to a
temp name, fsynced and renamed; ``meta.json`` last) and then the whole directory is renamed to
``<root>/<key>``. So a complete ``<root>/<key>`` appears at once; a ``<key>`` directory without
``meta.json`` can only be debris (e.g. copied by hand or written by a foreign tool) and is
reported as incomplete (:class:`CacheIncompleteError`), never used.

Verification (:func:`load`, :func:`verify`): ``meta.json`` must parse and name this key; each
file must exist with the recorded size (a shorter file is reported as truncated) and SHA-256;
the arrays must load (``allow_pickle=False``) with the recorded shape/dtype and matching N;
when ``key_parts`` are recorded, ``sha256(canonical_json(key_parts))`` must equal the key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from rkd.engine.checkpoint import atomic_write, sha256_file
from rkd.engine.file_lock import file_lock

from .key import FORMAT_VERSION, is_key, key_from_parts

PathLike = Union[str, Path]
Arrays = Tuple[torch.Tensor, torch.Tensor]

ADV_FILE = "adv.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
CORRUPT_DIR = ".corrupt"
_STAGING_PREFIX = ".staging-"

__all__ = [
    "CacheCorruptError", "CacheIncompleteError", "save", "load", "get_or_build", "ls", "verify",
    "entry_dir", "move_aside", "ADV_FILE", "LABELS_FILE", "META_FILE", "CORRUPT_DIR",
]


class CacheCorruptError(ValueError):
    """A cache entry exists but fails verification (checksum, size, shape, unreadable meta)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"adversarial cache entry {key[:16]}… is corrupt: {message}")
        self.key = key
        self.reason = message


class CacheIncompleteError(CacheCorruptError):
    """A ``<root>/<key>`` directory without ``meta.json`` (a half-written / foreign entry)."""


def entry_dir(root: PathLike, key: str) -> Path:
    if not is_key(key):
        raise ValueError(f"not a cache key (64 hex characters): {key!r}")
    return Path(root) / key.lower()


# ---- writing ---------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _file_record(path: Path, arr: np.ndarray) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "shape": list(arr.shape),
            "dtype": str(arr.dtype)}


def _check_arrays(adv: torch.Tensor, labels: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    if not torch.is_tensor(adv) or adv.dtype != torch.float32 or adv.dim() != 4:
        raise TypeError(f"adv must be a float32 (N, C, H, W) tensor, got "
                        f"{getattr(adv, 'dtype', type(adv))} {tuple(getattr(adv, 'shape', ()))}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.shape[0] != adv.shape[0]:
        raise ValueError(f"{adv.shape[0]} adversarial images but {labels.shape[0]} labels")
    a = np.ascontiguousarray(adv.detach().cpu().numpy())
    y = np.ascontiguousarray(labels.detach().cpu().to(torch.int64).numpy())
    return a, y


def save(root: PathLike, key: str, adv: torch.Tensor, labels: torch.Tensor, *,
         info: Optional[Mapping[str, Any]] = None, wall_time_s: Optional[float] = None) -> Path:
    """Write an entry atomically and return its directory.

    ``info`` is merged into ``meta.json`` (e.g. ``key_parts``, ``device``); ``wall_time_s`` is
    the generation time. If a valid entry for ``key`` already exists (e.g. a concurrent writer
    won the race) it is kept and the new data discarded; an invalid one is moved aside.
    """
    final = entry_dir(root, key)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    a, y = _check_arrays(adv, labels)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f"{_STAGING_PREFIX}{key[:12]}-"))
    try:
        files = {}
        for name, arr in ((ADV_FILE, a), (LABELS_FILE, y)):
            atomic_write(staging / name, lambda f, arr=arr: np.save(f, arr, allow_pickle=False))
            files[name] = _file_record(staging / name, arr)
        meta = dict(info or {})
        meta.update({
            "format": FORMAT_VERSION, "key": final.name, "num_samples": int(a.shape[0]),
            "shape": list(a.shape), "dtype": str(a.dtype), "labels_dtype": str(y.dtype),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "generation_wall_time_s": None if wall_time_s is None else float(wall_time_s),
            "files": files,
        })
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write(staging / META_FILE, lambda f: f.write(text.encode("utf-8")))
        _fsync_dir(staging)
        for attempt in range(2):
            try:
                os.rename(staging, final)
                _fsync_dir(root)
                return final
            except OSError:
                if not final.exists() or attempt:
                    raise
                try:
                    _verify_entry(final, final.name, deep=True)
                    return final  # someone else wrote the same content-addressed entry first
                except CacheCorruptError as exc:
                    move_aside(root, final.name, reason=str(exc))
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def move_aside(root: PathLike, key: str, reason: str = "") -> Optional[Path]:
    """Move ``<root>/<key>`` to ``<root>/.corrupt/<key>-<UTC time>-<random>/`` (kept for
    inspection, never deleted); returns the new path, or None when there was no entry."""
    src = entry_dir(root, key)
    if not src.exists():
        return None
    dest_root = Path(root) / CORRUPT_DIR
    dest_root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = dest_root / f"{src.name}-{stamp}-{uuid.uuid4().hex[:8]}"
    os.rename(src, dest)
    if reason:
        try:
            (dest / "CORRUPT_REASON.txt").write_text(reason + "\n")
        except OSError:  # pragma: no cover
            pass
    return dest


# ---- reading / verification ------------------------------------------------------------------
def _read_meta(d: Path, key: str) -> dict:
    path = d / META_FILE
    if not path.is_file():
        raise CacheIncompleteError(key, f"{META_FILE} is missing (half-written or foreign entry)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheCorruptError(key, f"{META_FILE} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CacheCorruptError(key, f"{META_FILE} has no 'files' table")
    if meta.get("format") != FORMAT_VERSION:
        raise CacheCorruptError(key, f"format {meta.get('format')!r} != {FORMAT_VERSION!r}")
    if meta.get("key") != key:
        raise CacheCorruptError(key, f"{META_FILE} names key {str(meta.get('key'))[:16]}…")
    parts = meta.get("key_parts")
    if parts is not None and key_from_parts(parts) != key:
        raise CacheCorruptError(key, "recorded key_parts do not hash to the key")
    return meta


def _check_file(d: Path, key: str, meta: dict, name: str) -> None:
    rec = meta["files"].get(name)
    if not isinstance(rec, dict) or "sha256" not in rec or "bytes" not in rec:
        raise CacheCorruptError(key, f"{META_FILE} has no checksum for {name}")
    path = d / name
    if not path.is_file():
        raise CacheCorruptError(key, f"{name} is missing")
    size = path.stat().st_size
    if size != rec["bytes"]:
        what = "truncated" if size < rec["bytes"] else "has extra bytes"
        raise CacheCorruptError(key, f"{name} {what}: {size} bytes, recorded {rec['bytes']}")
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        raise CacheCorruptError(key, f"{name} checksum mismatch: sha256 {digest[:12]}… != recorded "
                                     f"{str(rec['sha256'])[:12]}…")


def _load_array(d: Path, key: str, meta: dict, name: str) -> np.ndarray:
    try:
        arr = np.load(d / name, allow_pickle=False)
    except Exception as exc:  # checksum matched but the file is not a readable .npy
        raise CacheCorruptError(key, f"{name} could not be read: {exc}") from exc
    rec = meta["files"][name]
    if list(arr.shape) != list(rec.get("shape", [])) or str(arr.dtype) != rec.get("dtype"):
        raise CacheCorruptError(key, f"{name} is {arr.dtype} {list(arr.shape)}, recorded "
                                     f"{rec.get('dtype')} {rec.get('shape')}")
    return arr


def _verify_entry(d: Path, key: str, deep: bool = True) -> dict:
    """Raise CacheCorruptError unless the entry is complete and intact; return its meta."""
    meta = _read_meta(d, key)
    for name in (ADV_FILE, LABELS_FILE):
        _check_file(d, key, meta, name)
    if deep:
        _load_entry(d, key, meta, check_files=False)
    return meta


def _load_entry(d: Path, key: str, meta: dict, check_files: bool = True) -> Arrays:
    if check_files:
        for name in (ADV_FILE, LABELS_FILE):
            _check_file(d, key, meta, name)
    adv = _load_array(d, key, meta, ADV_FILE)
    labels = _load_array(d, key, meta, LABELS_FILE)
    if adv.dtype != np.float32 or adv.ndim != 4:
        raise CacheCorruptError(key, f"{ADV_FILE} must be float32 (N, C, H, W), is {adv.dtype} {adv.shape}")
    if labels.ndim != 1 or labels.shape[0] != adv.shape[0]:
        raise CacheCorruptError(key, f"{labels.shape} labels for {adv.shape[0]} images")
    return torch.from_numpy(adv), torch.from_numpy(labels.astype(np.int64, copy=False))


def load(root: PathLike, key: str) -> Optional[Arrays]:
    """``(adv float32 (N, C, H, W), labels int64 (N,))`` on CPU, or None when there is no entry.

    Raises:
        CacheCorruptError: the entry exists but fails verification (a
            :class:`CacheIncompleteError` when ``meta.json`` is missing).
    """
    d = entry_dir(root, key)
    if not d.exists():
        return None
    key = d.name
    meta = _read_meta(d, key)
    return _load_entry(d, key, meta)


def get_or_build(root: PathLike, key: str, build_fn: Callable[[], Arrays], *,
                 info: Optional[Mapping[str, Any]] = None) -> Arrays:
    """The cached ``(adv, labels)`` for ``key`` when a valid entry exists, else ``build_fn()``
    (timed, saved with ``info`` merged into ``meta.json``) and its result as CPU tensors
    (float32 images, int64 labels: exactly what a later call loads).

    A corrupt or incomplete entry is never used: a ``UserWarning`` is issued, the entry is moved
    to ``<root>/.corrupt/`` and the set is rebuilt. One process builds a key at a time
    (``<root>/.locks/<key>.lock``): a concurrent caller for the same set (two rows of a table
    that share it) waits, then loads what the first saved instead of building it again.
    """
    cached = _load_valid(root, key)
    if cached is not None:
        return cached
    with file_lock(Path(root) / ".locks" / f"{key}.lock"):
        cached = _load_valid(root, key)  # built while this call waited
        return cached if cached is not None else _build_and_save(root, key, build_fn, info)


def _load_valid(root: PathLike, key: str) -> Optional[Arrays]:
    try:
        return load(root, key)
    except CacheCorruptError as exc:
        dest = move_aside(root, key, reason=exc.reason)
        warnings.warn(f"{exc}; moved it to {dest} and rebuilding", UserWarning, stacklevel=3)
        return None


def _build_and_save(root: PathLike, key: str, build_fn: Callable[[], Arrays], info) -> Arrays:
    t0 = time.perf_counter()
    adv, labels = build_fn()
    wall = time.perf_counter() - t0
    save(root, key, adv, labels, info=info, wall_time_s=wall)
    return adv.detach().cpu().contiguous(), torch.as_tensor(labels).detach().cpu().to(torch.int64)


def _dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _entries(root: Path) -> list:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_key(p.name))


def ls(root: PathLike, check: bool = True) -> list:
    """One summary dict per entry (sorted by key): ``key, valid, message, num_samples, shape,
    dtype, attack, seed, dataset_fingerprint, model_sha256, size_bytes, created,
    generation_wall_time_s``. ``check=False`` skips the checksums (``valid`` is then None for
    entries whose ``meta.json`` reads fine)."""
    out = []
    for d in _entries(Path(root)):
        key = d.name
        row: dict = {"key": key, "size_bytes": _dir_size(d)}
        try:
            meta = _read_meta(d, key)
        except CacheCorruptError as exc:
            meta, valid, msg = {}, False, exc.reason
        else:
            valid, msg = (None, "not checked")
            if check:
                try:
                    _verify_entry(d, key, deep=True)
                    valid, msg = True, "ok"
                except CacheCorruptError as exc:
                    valid, msg = False, exc.reason
        parts = meta.get("key_parts") or {}
        row.update({
            "valid": valid, "message": msg, "num_samples": meta.get("num_samples"),
            "shape": meta.get("shape"), "dtype": meta.get("dtype"), "attack": parts.get("attack"),
            "seed": parts.get("seed"), "dataset_fingerprint": parts.get("dataset_fingerprint"),
            "model_sha256": parts.get("model_sha256"), "created": meta.get("created"),
            "generation_wall_time_s": meta.get("generation_wall_time_s"),
        })
        out.append(row)
    return out


def resolve_key(root: PathLike, key: str) -> str:
    """``key`` in full: a 64-hex key as given, or the one entry under ``root`` whose key starts
    with ``key`` (``rkd cache ls`` prints the first 16 characters); ValueError naming the
    problem otherwise."""
    key = key.strip().lower()
    if is_key(key):
        return key
    if not key or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not a cache key or key prefix (hex characters): {key!r}")
    found = [d.name for d in _entries(Path(root)) if d.name.startswith(key)]
    if len(found) != 1:
        what = "no entry" if not found else f"{len(found)} entries ({', '.join(f[:16] for f in found)})"
        raise ValueError(f"{what} under {root} with a key starting {key!r}")
    return found[0]


def verify(root: PathLike, key: Optional[str] = None) -> list:
    """``[(key, ok, message)]`` for one entry (``key``: the full key or a unique prefix) or
    every entry under ``root``."""
    dirs = [entry_dir(root, resolve_key(root, key))] if key is not None else _entries(Path(root))
    out = []
    for d in dirs:
        if not d.exists():
            out.append((d.name, False, "no such entry"))
            continue
        try:
            _verify_entry(d, d.name, deep=True)
            out.append((d.name, True, "ok"))
        except CacheCorruptError as exc:
            out.append((d.name, False, exc.reason))
    return out
