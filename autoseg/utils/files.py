"""Atomic writes and JSON helpers, so a killed run never leaves a half-written artifact that a rerun would trust."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; on success it is renamed over ``destination``.

    The temporary file lives in the same folder so that the final ``os.replace`` is atomic. If the body
    raises, the temporary file is removed and ``destination`` is left untouched. ``durable`` also flushes the
    file to disk before the rename (survives a power cut, not only a killed process); data that can be
    regenerated, such as preprocessed cases, may skip it (it cost a third of preprocessing time).

    Example:
        >>> with atomic_path("plans.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: some writers (SimpleITK, numpy) choose the format from the file name.
    suffix = "".join(destination.suffixes) or ".tmp"
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=f".partial{suffix}", dir=destination.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates files readable by their owner only; give the result the permissions of an ordinary file.
    os.chmod(temporary_path, 0o666 & ~_UMASK)
    try:
        yield temporary_path
        if durable:
            _fsync_file(temporary_path)
        os.replace(temporary_path, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        raise


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once at import, before any writer threads exist.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as stream:
        os.fsync(stream.fileno())


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and dataclass-like records into plain JSON types."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_json(data: Any) -> str:
    """Serialise deterministically: sorted keys would scramble the reading order, so we keep insertion order."""
    return json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    text = dumps_json(data)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through a temporary file so a killed run never leaves a truncated checkpoint."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
