"""Atomic file writes: every output is written to a temporary file and renamed into place.

A write that fails (a full disk, a quota, a read-only folder) removes its temporary file, leaves
the previous file as it was, and raises `OutputWriteError`: one line naming the file and the cause.
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

from utils.errors import UserError


class OutputWriteError(UserError, OSError):
    """An output file could not be written; nothing was replaced."""

    def __str__(self) -> str:
        return self.args[0]


def _atomic_write(path: str, write: Callable[[Any], None], binary: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None and not isinstance(err, OutputWriteError):
            raise OutputWriteError(_write_failure(path, err)) from err
        raise


def _write_failure(path: str, err: OSError) -> str:
    """The one-line message of a failed write."""
    cause = err.strerror or os.strerror(err.errno)
    advice = " (free some space; an interrupted run continues with --resume)" if err.errno in (
        errno.ENOSPC, errno.EDQUOT) else ""
    return f"could not write {path}: {cause}{advice}; the previous file, if any, is unchanged"


def atomic_write_text(path: str, text: str) -> None:
    """Write text to `path` atomically."""
    _atomic_write(path, lambda h: h.write(text), binary=False)


def atomic_write_json(path: str, data: Any, indent: int | None = 2) -> None:
    """Write JSON to `path` atomically (indented unless `indent=None`, e.g. for long label lists)."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def atomic_save_numpy(path: str, array: np.ndarray) -> None:
    """Save a NumPy array in .npy format to `path` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    _atomic_write(path, lambda h: h.write(buffer.getvalue()), binary=True)


def atomic_torch_save(path: str, obj: Any) -> None:
    """torch.save to `path` atomically."""
    import torch  # here, not at the top: the experiment tools (experiments/) write files without torch

    _atomic_write(path, lambda h: torch.save(obj, h), binary=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
