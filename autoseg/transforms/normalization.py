"""Intensity normalisation schemes, one named function per scheme, chosen per channel by the plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoseg.errors import UserError
from autoseg.records.configuration_parts import NormalizationScheme

# Guards the division for constant images (a blank channel would otherwise become NaN).
MINIMUM_STANDARD_DEVIATION = 1e-8


def normalize_zscore(channel: np.ndarray, *, scheme: NormalizationScheme, nonzero_mask: np.ndarray) -> np.ndarray:
    """Per-image z-score ``(x - mean) / std``.

    With ``use_mask`` the statistics come from the non-zero region only and everything outside it is set to 0:
    when cropping removed much of the image, the zero background would otherwise dominate mean and std.
    """
    if scheme.use_mask:
        inside = channel[nonzero_mask]
        if inside.size == 0:
            return np.zeros_like(channel, dtype=np.float32)
        mean, std = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
        result = (channel - mean) / max(std, MINIMUM_STANDARD_DEVIATION)
        result[~nonzero_mask] = 0
        return result.astype(np.float32, copy=False)
    mean, std = float(channel.mean(dtype=np.float64)), float(channel.std(dtype=np.float64))
    return ((channel - mean) / max(std, MINIMUM_STANDARD_DEVIATION)).astype(np.float32, copy=False)


def normalize_ct(channel: np.ndarray, *, scheme: NormalizationScheme, nonzero_mask: np.ndarray) -> np.ndarray:
    """CT: clip to the dataset's foreground [p0.5, p99.5] then ``(x - mean) / std`` with dataset-wide statistics.

    Hounsfield units mean the same in every scan, so one global mapping keeps tissue intensities comparable.
    """
    del nonzero_mask
    clipped = np.clip(channel, float(scheme.clip_low), float(scheme.clip_high))
    std = max(float(scheme.std), MINIMUM_STANDARD_DEVIATION)
    return ((clipped - float(scheme.mean)) / std).astype(np.float32, copy=False)


def normalize_none(channel: np.ndarray, *, scheme: NormalizationScheme, nonzero_mask: np.ndarray) -> np.ndarray:
    """Leave intensities as they are (already normalised data, or a channel holding a mask)."""
    del scheme, nonzero_mask
    return channel.astype(np.float32, copy=False)


NORMALIZATION_SCHEMES: dict[str, Callable[..., np.ndarray]] = {
    "zscore": normalize_zscore,
    "ct": normalize_ct,
    "none": normalize_none,
}


def normalize_channels(
    data: np.ndarray, *, schemes: Sequence[NormalizationScheme], nonzero_mask: np.ndarray
) -> np.ndarray:
    """Normalise a ``(C, z, y, x)`` float32 array in place of a copy, channel ``c`` with ``schemes[c]``."""
    if len(schemes) != data.shape[0]:
        raise UserError(
            f"the plan has {len(schemes)} normalization scheme(s) but the case has {data.shape[0]} channel(s); "
            "re-run `autoseg plan` for this dataset."
        )
    result = np.empty(data.shape, dtype=np.float32)
    for index, scheme in enumerate(schemes):
        name = scheme.scheme
        if name not in NORMALIZATION_SCHEMES:
            raise UserError(
                f"unknown normalization scheme {name!r} in plans.json (known: {', '.join(NORMALIZATION_SCHEMES)})."
            )
        result[index] = NORMALIZATION_SCHEMES[name](data[index], scheme=scheme, nonzero_mask=nonzero_mask)
    return result
