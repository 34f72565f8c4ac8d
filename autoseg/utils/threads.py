"""Thread settings that keep both cores of a small machine busy without oversubscribing them."""

from __future__ import annotations

import contextlib
import os


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (default: every available CPU) and one inter-op thread."""
    import torch

    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # the inter-op pool can be sized only once per process
        torch.set_num_interop_threads(1)
    return threads
