"""Atomic file writes: readers see the old file or the new one, never half of one; and reading a JSON file with an
error that names it.

Every file vlalign writes (checkpoints, metrics, reports, images) goes through here, so a crash or Ctrl-C in
the middle of a write never leaves a corrupt file behind. Files get ordinary permissions (0666 minus the umask),
not the 0600 that a temporary file is created with.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _commit(tmp: str, path: Path) -> None:
    """Give the finished temporary file ordinary permissions, then rename it over ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_utf8(path: str | Path, error: type[Exception] = ValueError) -> str:
    """The text of ``path``, which must be UTF-8: otherwise ``error`` with a message naming the file and the byte
    (Python's own message names neither the file nor what was expected)."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: str | Path, error: type[Exception] = ValueError, missing: str | None = None,
              expect: type | None = None) -> Any:
    """The JSON value in ``path``. A missing file (``missing`` says what was expected there), text that is not JSON
    or not UTF-8, or a top-level value that is not an ``expect`` (``dict`` or ``list``) raise ``error`` with a message
    that names the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing" + (f"; {missing}" if missing else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "an object", list: "a list"}.get(expect, expect.__name__)
        raise error(f"{path}: expected {kind} at the top level, got {type(data).__name__}")
    return data
