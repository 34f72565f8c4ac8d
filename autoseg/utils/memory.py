"""How much memory one case needs to preprocess and to predict and export, said before large work starts.

A model of the peak resident memory of one process handling a case of ``V`` voxels, ``C`` channels and ``K`` output
channels (classes), calibrated with ``benchmarks/large_volume_memory.py`` (a 600x512x512 int16 volume, 3 classes,
tiny network, no resampling): preprocessing holds about 11 bytes per input voxel (the file's voxels and a few
float32 copies); prediction holds the input, the ``K`` accumulated logits and their weights in float32, then the
probabilities that export resamples class by class. Resampling to another spacing scales the middle part by the
ratio of voxel counts; the estimate uses the input grid, which is what export writes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

PROCESS_BASE_GB = 0.4  # python, numpy, torch and SimpleITK loaded
PREPROCESS_BYTES_PER_VOXEL = 11.0
# Per voxel: the float32 input channels, K + 1 float32 sums (logits and weights) and the label map.
PREDICT_BYTES_PER_VOXEL_PER_CHANNEL = 4.0
PREDICT_BYTES_PER_VOXEL_FIXED = 1.0
LARGE_CASE_GB = 2.0


@dataclasses.dataclass(frozen=True)
class CaseMemoryEstimate:
    """Estimated peak memory (GB) of one process for one case."""

    voxels: int
    preprocess_gb: float
    predict_gb: float

    @property
    def is_large(self) -> bool:
        return max(self.preprocess_gb, self.predict_gb) >= LARGE_CASE_GB


def estimate_case_memory(shape: Sequence[int], *, channels: int, classes: int) -> CaseMemoryEstimate:
    """Peak memory to preprocess (per worker) and to predict and export (one process) a case of ``shape``.

    >>> estimate = estimate_case_memory((600, 512, 512), channels=1, classes=3)
    >>> round(estimate.preprocess_gb, 1), round(estimate.predict_gb, 1), estimate.is_large
    (2.1, 3.7, True)
    """
    voxels = math.prod(int(size) for size in shape)
    per_voxel = PREDICT_BYTES_PER_VOXEL_PER_CHANNEL * (channels + classes + 1) + PREDICT_BYTES_PER_VOXEL_FIXED
    return CaseMemoryEstimate(
        voxels=voxels,
        preprocess_gb=PROCESS_BASE_GB + voxels * channels * PREPROCESS_BYTES_PER_VOXEL / 1e9,
        predict_gb=PROCESS_BASE_GB + voxels * per_voxel / 1e9,
    )


def describe_largest_case(
    shapes: dict[str, Sequence[int]], *, channels: int, classes: int, workers: int
) -> str | None:
    """One sentence on the memory the largest case needs, or None when no case is large (under ``LARGE_CASE_GB``)."""
    if not shapes:
        return None
    name, shape = max(shapes.items(), key=lambda item: math.prod(int(size) for size in item[1]))
    estimate = estimate_case_memory(shape, channels=channels, classes=classes)
    if not estimate.is_large:
        return None
    size = "x".join(str(int(value)) for value in shape)
    return (
        f"memory: the largest case, {name} ({size}, {estimate.voxels / 1e6:.0f} M voxels), needs about "
        f"{estimate.preprocess_gb:.1f} GB per preprocessing worker ({workers} at once: "
        f"{workers * estimate.preprocess_gb:.1f} GB) and {estimate.predict_gb:.1f} GB to predict and export"
    )
