"""Checkpoints that are verified before use and resume bit-exactly on CPU.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values (loadable with
``weights_only=True``) plus a ``.sha256`` sidecar written after the file. Files are written
atomically (temp file + rename). On load the checksum is verified first: a truncated or altered
file raises :class:`CheckpointError` instead of being used.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what it is loaded into."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically: ``write(f)`` into a temp file in the same directory, fsync,
    rename over ``path``. A crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """Save ``obj`` to ``path`` atomically and write its checksum sidecar."""
    path = atomic_write(path, lambda f: torch.save(obj, f))
    digest = sha256_file(path)
    atomic_write(_sidecar(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    return path


def verified_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a file written by :func:`atomic_torch_save` after verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {side.name}; refusing to use it")
    expected = side.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual[:12]}… != recorded {expected[:12]}…")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pragma: no cover - checksum matched but unpickling failed
        raise CheckpointError(f"checkpoint {path} could not be read: {exc}") from exc


def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA when present) RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # the devices this process sees, which may be fewer than the saving process saw
        for i, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, i)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
