"""What every result file in ``benchmarks/results/`` records about where and when its numbers were measured.

A figure is only comparable with another measured on the same machine in the same run; these fields let a reader
tell whether two result files can be compared at all: the code's commit (and whether the tree had local changes),
the date, the CPU model, whether it executes bfloat16 natively (which decides ``--precision auto`` on a CPU), the
threads torch used and the cores the machine has.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def _git(*arguments: str) -> str:
    try:
        completed = subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (the processor's name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance() -> dict:
    """Commit, date, CPU and thread settings of this run, for the ``provenance`` field of a result file."""
    import torch

    from autoseg.utils.precision import cpu_has_native_bfloat16

    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "local_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_native_bfloat16": cpu_has_native_bfloat16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def relative_to_repository(path: str | Path) -> str:
    """``path`` relative to the project root where it lies below it or beside it (``../shared/...``), so that a
    result file names no folder of one machine; other paths (a scratch folder under /tmp) as their name alone."""
    resolved = Path(path).resolve()
    for base, prefix in ((REPOSITORY, ""), (REPOSITORY.parent, "../")):
        try:
            return prefix + str(resolved.relative_to(base))
        except ValueError:
            continue
    return resolved.name
