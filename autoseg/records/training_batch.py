"""The batch a configuration really trains with on a device: the plan's on an accelerator, capped on a CPU.

One rule, used by the training loop (what it runs), the planner (what it prices) and the machine benchmark (what it
predicts). Why a CPU trains smaller batches than the plan, and what it measured: docs/training.md ("Batch size").

Example:
    >>> device_batch_size(9, (640, 896), device="cpu")
    2
    >>> device_batch_size(9, (640, 896), device="cuda")
    9
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CPU_VOXELS_PER_STEP = 1_200_000  # a CPU step's batch holds at most this many voxels
MINIMUM_BATCH_SIZE = 2  # never fewer than two patches per step (batch statistics, foreground oversampling)


def device_batch_size(batch_size: int, patch_size: Sequence[int], *, device: str,
                      max_voxels: int | None = None) -> int:
    """``batch_size`` on ``device`` (a type: ``cpu``, ``cuda``, ``mps``): unchanged off the CPU; on the CPU at most
    ``max_voxels`` (default ``CPU_VOXELS_PER_STEP``) voxels per step, but never below ``MINIMUM_BATCH_SIZE``."""
    if device != "cpu":
        return int(batch_size)
    cap = CPU_VOXELS_PER_STEP if max_voxels is None else max_voxels
    return min(int(batch_size), max(MINIMUM_BATCH_SIZE, cap // math.prod(patch_size)))


def requested_batch_size(requested: int) -> int:
    """A batch size the user asked for (``--batch-size``); raises ``ValueError`` below one."""
    if requested < 1:
        raise ValueError(f"batch size must be at least 1, got {requested}")
    return int(requested)
