"""Thread settings that keep both cores of a small machine busy without oversubscribing them."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROCESS_CGROUP = Path("/proc/self/cgroup")


def _quota_files() -> list[Path]:
    """Where a CPU quota may be: the container's own view of its group, then this process's group by path."""
    files = [CGROUP_ROOT / "cpu.max", CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us"]
    with contextlib.suppress(OSError, ValueError):
        for line in PROCESS_CGROUP.read_text(encoding="ascii").splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            group = path.lstrip("/")
            if hierarchy == "0":  # cgroup v2
                files.append(CGROUP_ROOT / group / "cpu.max")
            elif "cpu" in controllers.split(","):  # cgroup v1
                files.append(CGROUP_ROOT / "cpu" / group / "cpu.cfs_quota_us")
    return list(dict.fromkeys(files))


def _quota_in(path: Path) -> float | None:
    """CPUs' worth of time allowed by one quota file (None: unlimited or unreadable)."""
    try:
        fields = path.read_text(encoding="ascii").split()
        if path.name == "cpu.max":
            return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
        period = int((path.parent / "cpu.cfs_period_us").read_text(encoding="ascii"))
        return int(fields[0]) / period if int(fields[0]) > 0 else None
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time this process's container may use (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), or
    None when unlimited or unknown.

    A container limited to 2 CPUs on a 64-core host still sees 64 CPUs in its affinity mask; 64 threads then take
    turns on 2 CPUs' worth of time, and every OpenMP barrier waits for a descheduled thread.
    """
    quotas = [quota for quota in map(_quota_in, _quota_files()) if quota is not None]
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, further limited by a container's CPU quota (rounded up)."""
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def set_torch_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (default: every available CPU) and one inter-op thread."""
    import torch

    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # the inter-op pool can be sized only once per process
        torch.set_num_interop_threads(1)
    return threads
