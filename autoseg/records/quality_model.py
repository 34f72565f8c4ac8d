"""The quality model of a trained model (``inference.json["quality"]``): what turns a case's quality signals into an
expected Dice, and the score below which a case is flagged.

Model selection fits it on the cross-validation predictions (``autoseg.pipeline.quality_fit``): the training labels'
volume range per class, a monotone (isotonic) map from the raw score to the Dice the cross-validation cases reached,
anchored at (0, 0), and ``flag_below`` = 0.8 x the median cross-validation Dice. It travels with ``inference.json``,
so an exported model predicts the same scores after import.

Example:
    >>> model = QualityModel(raw_scores=(0.5, 0.9, 1.0), expected=(0.6, 0.85, 0.9), flag_below=0.7,
    ...                      volume_ranges={"1": (100.0, 400.0, 1.0)})
    >>> round(model.expected_dice(0.95), 3), model.expected_dice(0.0), round(model.expected_dice(0.25), 2)
    (0.875, 0.0, 0.3)
    >>> model.volume_factor(1, 200.0), model.volume_factor(1, 800.0), model.volume_factor(1, 0.0)
    (1.0, 0.5, 0.0)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autoseg.records.fingerprint import Fingerprint
from autoseg.records.json_record import JsonRecord


@dataclasses.dataclass(frozen=True)
class QualityModel(JsonRecord):
    """``raw_scores`` -> ``expected`` Dice (increasing knots; linear in between, (0, 0) below the first, the last
    value above it), the flag threshold in expected Dice, and per label value ``(min mm^3, max mm^3, share of
    training cases holding it)``. ``fitted_on`` counts the cross-validation cases behind the knots."""

    score: str = "mean over classes of (mirror agreement x largest piece x volume), x mean confidence"
    raw_scores: tuple[float, ...] = ()
    expected: tuple[float, ...] = ()
    flag_below: float | None = None
    volume_ranges: dict[str, tuple[float, float, float]] = dataclasses.field(default_factory=dict)
    fitted_on: int = 0
    cross_validation_median_dice: float | None = None

    @property
    def calibrated(self) -> bool:
        return bool(self.raw_scores)

    def expected_dice(self, raw_score: float) -> float:
        """The calibrated expected Dice of ``raw_score`` (the raw score itself before calibration)."""
        if not self.calibrated:
            return float(raw_score)
        knots = np.array([0.0, *self.raw_scores])
        values = np.array([0.0, *self.expected])
        return float(np.interp(raw_score, knots, values))

    def volume_factor(self, label_value: int, volume_mm3: float) -> float | None:
        """1 inside the training range, the ratio to its nearer end outside; 0 for a missing class every training
        case has; None without a range for the class."""
        entry = self.volume_ranges.get(str(label_value))
        if entry is None:
            return None
        smallest, largest, presence = entry
        if volume_mm3 <= 0:
            return 0.0 if presence >= 1.0 else 1.0
        if volume_mm3 < smallest:
            return float(volume_mm3 / smallest)
        if volume_mm3 > largest:
            return float(largest / volume_mm3)
        return 1.0

    @classmethod
    def from_fingerprint(cls, fingerprint: Fingerprint) -> QualityModel:
        """An uncalibrated model holding the training labels' volume range per class (cross-validation uses it
        before model selection has fitted the calibration)."""
        volumes: dict[str, list[float]] = {}
        for case in fingerprint.cases.values():
            voxel_volume = float(np.prod(case.spacing)) if case.spacing else 1.0
            for value, count in (case.class_voxels or {}).items():
                if count > 0:
                    volumes.setdefault(str(value), []).append(count * voxel_volume)
        number = max(len(fingerprint.cases), 1)
        ranges = {value: (min(found), max(found), len(found) / number) for value, found in sorted(volumes.items())}
        return cls(volume_ranges=ranges)
