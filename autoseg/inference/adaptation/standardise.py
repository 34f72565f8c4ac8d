"""Intensity standardisation: the first, closed-form step of every adaptation method.

Gain, contrast, dynamic range (log compression) and gamma differ between scanners and survive the per-image z-score
of preprocessing whenever they are not linear. After Nyul and Udupa (1999, *On standardizing the MR image intensity
scale*), an image's intensity distribution is summarised by landmarks (percentiles, ``LANDMARK_PERCENTILES``) and
mapped piecewise-linearly onto target landmarks.

``train-adapter`` records, per channel and landmark, the range that the preprocessed training images span (its
``ENVELOPE_PERCENTILES`` over the cases, ``SourceIntensities``). At test time each landmark of the case is moved
to the nearest value inside that range: a training-like image is left as it is (every landmark already inside), a
foreign one has only its outlying part of the distribution pulled back. Both landmark sequences are non-decreasing,
so the map is monotone; beyond the outer landmarks it shifts intensities without stretching them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

LANDMARK_PERCENTILES = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 98.0, 99.0)
ENVELOPE_PERCENTILES = (5.0, 95.0)  # of each landmark over the training cases: the range a case is pulled into
MAXIMUM_VOXELS = 2_000_000  # landmarks of larger images come from an evenly strided subset of their voxels


def intensity_landmarks(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """Percentile landmarks ``(channels, len(LANDMARK_PERCENTILES))`` of a preprocessed image ``(C, ...)``."""
    array = np.asarray(data, dtype=np.float32).reshape(len(data), -1)
    stride = max(1, array.shape[1] // MAXIMUM_VOXELS)
    return np.percentile(array[:, ::stride], LANDMARK_PERCENTILES, axis=1).T.astype(np.float64)


@dataclasses.dataclass(frozen=True)
class SourceIntensities:
    """Per channel and landmark, the low and high end of what the training images span."""

    low: tuple[tuple[float, ...], ...]
    high: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, landmarks: Sequence[np.ndarray]) -> SourceIntensities:
        """From the landmarks of each training case (``intensity_landmarks``)."""
        stacked = np.stack(list(landmarks))  # (cases, channels, landmarks)
        low, high = np.percentile(stacked, ENVELOPE_PERCENTILES, axis=0)
        return cls(_nested(low), _nested(high))

    def target(self, case: np.ndarray) -> np.ndarray:
        """The case's landmarks, each moved to the nearest value the training images span."""
        return np.clip(case, np.asarray(self.low), np.asarray(self.high))

    def to_dict(self) -> dict:
        return {"percentiles": list(LANDMARK_PERCENTILES), "low": [list(row) for row in self.low],
                "high": [list(row) for row in self.high]}

    @classmethod
    def from_dict(cls, data: dict) -> SourceIntensities:
        if [float(value) for value in data["percentiles"]] != list(LANDMARK_PERCENTILES):
            raise ValueError("the recorded intensity landmarks use other percentiles")
        return cls(_nested(np.asarray(data["low"])), _nested(np.asarray(data["high"])))


def _nested(array: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(value) for value in row) for row in array)


class IntensityStandardiser(nn.Module):
    """The monotone piecewise-linear map of each channel from ``source`` landmarks to ``target`` landmarks."""

    def __init__(self, source: np.ndarray, target: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("source", torch.as_tensor(np.maximum.accumulate(source, axis=1), dtype=torch.float32))
        self.register_buffer("target", torch.as_tensor(np.maximum.accumulate(target, axis=1), dtype=torch.float32))

    @property
    def is_identity(self) -> bool:
        return bool(torch.equal(self.source, self.target))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` ``(B, C, ...)`` (or an image ``(C, ...)``: pass it with a leading batch axis)."""
        channels = []
        for channel in range(batch.shape[1]):
            values, source, target = batch[:, channel], self.source[channel], self.target[channel]
            upper = torch.bucketize(values.detach().contiguous(), source).clamp(1, len(source) - 1)
            x0, x1, y0, y1 = source[upper - 1], source[upper], target[upper - 1], target[upper]
            inside = y0 + (values - x0) * (y1 - y0) / (x1 - x0).clamp_min(1e-6)
            below = target[0] + (values - source[0])  # beyond the outer landmarks: shifted, not stretched
            above = target[-1] + (values - source[-1])
            channels.append(torch.where(values < source[0], below, torch.where(values > source[-1], above, inside)))
        return torch.stack(channels, dim=1)


def standardiser_for(data: np.ndarray | torch.Tensor, source: SourceIntensities | None) -> IntensityStandardiser | None:
    """The standardiser of one preprocessed case ``(C, ...)``, or None when nothing is recorded or nothing moves."""
    if source is None:
        return None
    landmarks = intensity_landmarks(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    standardiser = IntensityStandardiser(landmarks, source.target(landmarks))
    return None if standardiser.is_identity else standardiser
