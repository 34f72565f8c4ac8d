"""Advisory folder locks, so that two autoseg processes never write the same working or output folder at once.

A lock is ``fcntl.flock`` on a small file ``FOLDER/.autoseg.lock`` whose body names the holder (pid, command line,
host, start time), so that a refused command can say who is in the way. The kernel releases a flock when its
holder dies, ``kill -9`` included, so a lock can never be left stale and needs no clean-up; the file itself stays.

Granularity (docs/design.md): ``plan``, ``preprocess``, ``run`` and ``find-best`` lock the dataset's working
folder exclusively; ``train`` locks it shared (folds of one dataset train at once, e.g. one per GPU) plus its fold
folder exclusively; ``predict`` locks its output folder exclusively. Locks never wait: a second command fails at
once with one sentence. flock works across processes of one machine, and across machines on NFS v4 (Linux emulates
it with byte-range locks there).

Example (a second process asks for a folder that this one holds):
    >>> import subprocess
    >>> second_command = [sys.executable, "-c", "from autoseg.utils.locking import folder_lock\\n"
    ...                   "with folder_lock('autoseg_work/Dataset004_Hippocampus'): pass"]
    >>> with folder_lock("autoseg_work/Dataset004_Hippocampus"):
    ...     refused = subprocess.run(second_command, capture_output=True, text=True)
    >>> print(refused.stderr.strip().splitlines()[-1])
    autoseg.utils.locking.FolderInUseError: ...Dataset004_Hippocampus is in use by `...` (pid ..., since ...);
    wait for it to finish or stop it.
    >>> subprocess.run(second_command).returncode  # free again once the first holder is done
    0
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.utils.files import describe_file_system_error

LOCK_FILE_NAME = ".autoseg.lock"


class FolderInUseError(UserError):
    """Another process holds the lock of a folder this command needs."""


@dataclasses.dataclass
class _HeldLock:
    descriptor: int
    shared: bool
    depth: int = 1


# Locks held by this process, by lock file. flock belongs to an open file, so a second open of the same lock file by
# this process (``autoseg run`` calling a stage that also locks) would be refused by its own first lock; nested
# requests reuse the lock already held instead.
_HELD: dict[Path, _HeldLock] = {}
_command_line: list[str] | None = None


def _forget_locks_in_forked_child() -> None:
    # A forked worker shares its parent's open lock files. Closing its copies (never LOCK_UN, which would release
    # the parent's lock) ties each lock to the process that took it: a worker that outlives a killed parent does
    # not keep the folder locked.
    for held in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(held.descriptor)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_forked_child)


def note_command_line(arguments: Sequence[str]) -> None:
    """Record the ``autoseg`` arguments of this process, for the body of the locks it takes (the CLI calls this)."""
    global _command_line
    _command_line = ["autoseg", *arguments]


def _this_process() -> dict:
    command = _command_line or [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {
        "pid": os.getpid(),
        "command": shlex.join(command),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], *, shared: bool = False, create: bool = True) -> Iterator[None]:
    """Hold the lock of ``folder`` (exclusive, or ``shared`` with other shared holders) for the ``with`` body.

    Args:
        folder: the folder to protect; its lock file is ``folder/.autoseg.lock``.
        shared: several shared holders may hold the lock together; an exclusive holder excludes everyone.
        create: make ``folder`` if it does not exist. With ``create=False`` a missing folder is not locked: there
            is nothing in it to protect, and the command's own checks report that it is missing.

    Raises:
        FolderInUseError: another process holds the lock in a conflicting mode (the message names it).
        UserError: the lock file cannot be created (a read-only or full file system, no permission).
    """
    folder = Path(folder).expanduser().resolve()
    lock_path = folder / LOCK_FILE_NAME
    held = _HELD.get(lock_path)
    if held is not None:
        if held.shared and not shared:
            raise RuntimeError(f"{folder}: this process holds a shared lock and asked for an exclusive one.")
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
        return
    if not create and not folder.is_dir():
        yield
        return
    descriptor = _open_lock_file(folder, lock_path)
    try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise FolderInUseError(_in_use_message(folder, holder)) from None
    except BaseException:
        os.close(descriptor)
        raise
    _write_holder(descriptor, shared=shared)
    _HELD[lock_path] = _HeldLock(descriptor, shared)
    try:
        yield
    finally:
        del _HELD[lock_path]
        _clear_holder_if_ours(descriptor)
        # Unlock explicitly: closing releases the flock only once no other process shares the open file.
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _open_lock_file(folder: Path, lock_path: Path) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        # Name the folder the user chose; the lock file inside it is an implementation detail.
        sentence = describe_file_system_error(OSError(error.errno, error.strerror, str(folder)))
        if sentence is None:
            raise
        raise UserError(sentence) from None


def _write_holder(descriptor: int, *, shared: bool) -> None:
    """Name this process in the lock file. Best effort: the body only makes a refusal's message precise.

    One body names one holder; a shared holder leaves the body of another live holder in place, so that the body
    keeps naming a process that still holds the lock.
    """
    if shared:
        current = _read_holder(descriptor)
        if current is not None and current["pid"] != os.getpid() and _may_be_alive(current):
            return
    body = (json.dumps(_this_process()) + "\n").encode()
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, body, 0)


def _clear_holder_if_ours(descriptor: int) -> None:
    current = _read_holder(descriptor)
    if current is not None and current["pid"] == os.getpid() and current.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)


def _read_holder(descriptor: int) -> dict | None:
    try:
        holder = json.loads(os.pread(descriptor, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _may_be_alive(holder: dict) -> bool:
    """False only for a process of this host that has ended (one on another host cannot be asked)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use_message(folder: Path, holder: dict | None) -> str:
    how_to_proceed = "wait for it to finish or stop it."
    # The body may be missing (being written) or name a shared holder that has ended while others hold on.
    if holder is None or not _may_be_alive(holder):
        return f"{folder} is in use by another autoseg process; {how_to_proceed}"
    where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
    return (
        f"{folder} is in use by `{holder.get('command', 'autoseg')}` (pid {holder['pid']}{where}, "
        f"since {_since(holder.get('started'))}); {how_to_proceed}"
    )


def _since(started: object) -> str:
    try:
        moment = datetime.datetime.fromisoformat(str(started))
    except ValueError:
        return "an unknown time"
    now = datetime.datetime.now(moment.tzinfo)
    return moment.strftime("%H:%M" if moment.date() == now.date() else "%Y-%m-%d %H:%M")
