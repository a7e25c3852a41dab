"""Errors raised when a dataset's files are missing or fail verification."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader expects them (and were not downloaded).

    Attributes: ``dataset`` (name), ``path`` (the expected location), ``missing`` (file names).
    The message names the dataset, the exact expected path, and how to fix it (set
    ``data.download=true`` or place the files there).
    """

    def __init__(
        self,
        dataset: str,
        path: Union[str, Path],
        missing: Optional[Sequence[str]] = None,
        hint: Optional[str] = None,
    ):
        self.dataset = dataset
        self.path = str(path)
        self.missing = list(missing or [])
        msg = f"dataset {dataset!r} not found: expected {self.path}"
        if self.missing:
            msg += f" (missing: {', '.join(self.missing)})"
        msg += ". " + (
            hint
            if hint is not None
            else "Set data.download=true (download=True) to download it, or place the files there."
        )
        super().__init__(msg)

    def __str__(self) -> str:  # FileNotFoundError's default __str__ would mangle a 1-arg message
        return self.args[0]


class DatasetIntegrityError(RuntimeError):
    """The files are present but fail the checksum that torchvision knows for the official files.

    Happens with user-made or re-packed files; pass ``verify=False`` (``data.verify=false``)
    to load them without the md5 check, or re-download the official files.
    """

    def __init__(self, dataset: str, path: Union[str, Path]):
        self.dataset = dataset
        self.path = str(path)
        super().__init__(
            f"dataset {dataset!r}: files in {self.path} failed torchvision's md5 check against "
            "the official release. Re-download them (data.download=true after removing the bad "
            "files), or set data.verify=false (verify=False) to load user-provided files "
            "without the checksum."
        )


__all__ = ["DatasetIntegrityError", "DatasetNotFoundError"]
