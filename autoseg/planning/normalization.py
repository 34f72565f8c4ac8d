"""Per-channel intensity normalisation chosen from the channel name (``dataset.json`` ``channel_names``)."""

from __future__ import annotations

from collections.abc import Callable

from autoseg.records.fingerprint import Fingerprint, IntensityStatistics

# z-score inside the non-zero mask when cropping removed more than a quarter of the median image: the zero border
# then dominates the statistics and is not tissue (skull-stripped MRI, for example).
MASK_RELATIVE_SIZE_THRESHOLD = 0.75


def computed_tomography(statistics: IntensityStatistics, *, median_relative_size_after_crop: float) -> dict:
    """CT values are physical (Hounsfield units): clip to the dataset's foreground [p0.5, p99.5], then subtract the
    foreground mean and divide by its standard deviation, with the same numbers for every image."""
    return {
        "scheme": "ct",
        "clip_low": statistics.percentile_00_5,
        "clip_high": statistics.percentile_99_5,
        "mean": statistics.mean,
        "std": statistics.std,
    }


def no_normalization(statistics: IntensityStatistics, *, median_relative_size_after_crop: float) -> dict:
    """Leave intensities as they are (the user asked for it with the channel name ``noNorm``)."""
    return {"scheme": "none"}


def per_image_zscore(statistics: IntensityStatistics, *, median_relative_size_after_crop: float) -> dict:
    """MRI, ultrasound and other arbitrary-unit images: each image's own mean and standard deviation."""
    return {
        "scheme": "zscore",
        "use_mask": bool(median_relative_size_after_crop < MASK_RELATIVE_SIZE_THRESHOLD),
    }


NormalizationRule = Callable[..., dict]

# Lower-cased channel name -> rule; anything else gets the per-image z-score.
NORMALIZATION_BY_CHANNEL_NAME: dict[str, NormalizationRule] = {
    "ct": computed_tomography,
    "nonorm": no_normalization,
    "none": no_normalization,
}


def plan_normalization(fingerprint: Fingerprint) -> list[dict]:
    """One normalisation entry per channel, in channel order."""
    entries = []
    for index, name in enumerate(fingerprint.channel_names or ()):
        rule = NORMALIZATION_BY_CHANNEL_NAME.get(str(name).strip().lower(), per_image_zscore)
        entries.append(
            rule(
                (fingerprint.foreground_intensities or {})[str(index)],
                median_relative_size_after_crop=fingerprint.median_relative_size_after_crop,
            )
        )
    return entries
