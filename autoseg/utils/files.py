"""Atomic writes and JSON helpers, so a killed run never leaves a half-written artifact that a rerun would trust."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoseg.errors import CorruptFileError


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; on success it is renamed over ``destination``.

    The temporary file lives in the same folder so that the final ``os.replace`` is atomic. If the body
    raises, the temporary file is removed and ``destination`` is left untouched. ``durable`` also flushes the
    file to disk before the rename (survives a power cut, not only a killed process); data that can be
    regenerated, such as preprocessed cases, may skip it (it cost a third of preprocessing time).

    Example:
        >>> with atomic_path("plans.json") as temporary:
        ...     _ = temporary.write_text('{"configurations": {}}')
        ...     Path("plans.json").exists()  # nothing at the destination until the body succeeds
        False
        >>> Path("plans.json").read_text()
        '{"configurations": {}}'
        >>> with atomic_path("plans.json") as temporary:
        ...     _ = temporary.write_text("{half")
        ...     raise RuntimeError("stopped while writing")
        Traceback (most recent call last):
        RuntimeError: stopped while writing
        >>> Path("plans.json").read_text(), sorted(path.name for path in Path().iterdir())  # old file intact
        ('{"configurations": {}}', ['plans.json'])
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: some writers (SimpleITK, numpy) choose the format from the file name.
    suffix = "".join(destination.suffixes) or ".tmp"
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=f".partial{suffix}", dir=destination.parent
        )
    except OSError as error:  # name the file the user asked for, not a random temporary name
        raise OSError(error.errno, error.strerror, str(destination)) from error
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates files readable by their owner only; give the result the permissions of an ordinary file.
    os.chmod(temporary_path, 0o666 & ~_UMASK)
    try:
        yield temporary_path
        if durable:
            _fsync_file(temporary_path)
        os.replace(temporary_path, destination)
    except BaseException as error:
        # Decide before the temporary file is deleted, which frees the space its partial content took.
        out_of_space = isinstance(error, Exception) and _ran_out_of_space(error, destination.parent)
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        if out_of_space:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination)) from error
        raise


# Writers report a full disk in their own ways: json raises OSError(ENOSPC) without a file name, numpy an OSError
# without an errno ("N requested and M written"), torch and ITK a RuntimeError. A writer that failed while the file
# system has (almost) no free block left ran out of space, whatever it raised.
_NEARLY_FULL_BYTES = 64 * 1024


def _ran_out_of_space(error: Exception, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        status = os.statvfs(folder)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < _NEARLY_FULL_BYTES


# errno -> what went wrong and what to do, for errors of the file system that are the user's to fix.
_FILE_SYSTEM_PROBLEMS = {
    errno.ENOSPC: "no space left on the device; free some space (or choose another folder) and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space (or choose another folder) and run the command again",
    errno.EROFS: "is on a read-only file system; choose a writable folder (--work-dir, -o) or copy the data there",
    errno.EACCES: "permission denied; give this user access to it or choose another folder (--work-dir, -o)",
    errno.EPERM: "operation not permitted; give this user access to it or choose another folder (--work-dir, -o)",
}


def describe_file_system_error(error: OSError, *, fallback_path: str | os.PathLike[str] | None = None) -> str | None:
    """One sentence naming the file and the fix for a full, read-only or forbidden file system; None for others.

    Example:
        >>> describe_file_system_error(OSError(errno.ENOSPC, "No space left on device", "autoseg_work/plans.json"))
        'autoseg_work/plans.json: no space left on the device; free some space ...'
    """
    problem = _FILE_SYSTEM_PROBLEMS.get(error.errno)
    if problem is None:
        return None
    path = error.filename or fallback_path
    return f"{path}: {problem}." if path else f"{problem[0].upper()}{problem[1:]}."


def remove_stale_temporaries(folder: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """Delete the temporary files (and folders) that writers killed mid-write left in ``folder`` (and its subfolders
    if ``recursive``); returns how many.

    Only safe while no other process writes into ``folder`` (hold its lock): a live writer's temporary looks the same.
    """
    removed = 0
    pattern = ".*.partial*"
    for path in sorted(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():  # not inside a temporary folder removed just before
            path.unlink(missing_ok=True)
        else:
            continue
        removed += 1
    return removed


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
    """Read a JSON file.

    Raises:
        CorruptFileError: the file is not valid JSON (cut short or damaged); a ``UserError`` naming it, and a
            ``ValueError`` so that callers that redo or explain a bad record can still catch it as before.
    """
    with open(path, encoding="utf-8") as stream:
        try:
            return json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
            raise CorruptFileError(
                f"{path}: is not valid JSON ({reason}; cut short or damaged?); restore it, or delete it and run the "
                "command that wrote it again."
            ) from None


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
