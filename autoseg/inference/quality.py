"""How far to trust one prediction: per-case quality signals gathered while predicting, and the score made of them.

Nothing here needs labels; every signal comes from what prediction computes anyway (Zenk et al., "Comparative
benchmarking of failure detection methods in medical image segmentation", MedIA 2025: aggregate per case, and the
agreement between predictions of the same case is a robust failure detector):

mirror agreement   with test-time mirroring, every flip of every sliding-window tile gives its own label map; per
                   class, the mean pairwise Dice between the flips (weighted by the Gaussian importance of each tile
                   voxel, so a tile's centre counts as it does in the blended prediction). 1 = all flips agree.
fold agreement     with several folds, the mean pairwise Dice between the folds' label maps, per class.
largest piece      the share of a class's voxels in its largest connected component of the written label map (a
                   confident blob away from the organ lowers it).
volume             the class's volume against the range of the training labels' volumes (``QualityModel``): 1 inside
                   the range, the ratio to the nearest end outside; a class every training case has but the
                   prediction lacks scores 0.
confidence         the mean largest probability over the image, over the predicted foreground, and the mean
                   normalised entropy over the predicted foreground (the baselines a failure detector must beat).

The per-class score is the product of the mirror-agreement, piece and volume factors that exist; the case's raw score
their mean over classes times the image's mean confidence (agreement measures stability, confidence certainty: on
the cross-validation and shifted cases of docs/quality.md the product ranked failures better than either).
``QualityModel`` (model selection fits it on the cross-validation predictions) turns it into an expected Dice. Fold
agreement is reported (a column, and a reason when low) but stays out of the score: the cross-validation predicts
each case with one fold, so a calibration could never have seen it.

Example (two label maps of a 1 x 2 x 4 image, class 1 shares 2 of 3 voxels):
    >>> counts = AgreementCounts(num_targets=1, num_maps=2)
    >>> maps = torch.tensor([[[0, 1, 1, 1]], [[0, 1, 1, 0]]], dtype=torch.uint8).reshape(2, 4)
    >>> counts.add(class_masks(maps, targets=(1,)))
    >>> round(float(counts.pairwise_dice()[0]), 3)  # 2 * 2 / (3 + 2)
    0.8
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from autoseg.records.quality_model import QualityModel

CHUNK_VOXELS = 1 << 22  # voxels counted at once: a few maps of 4 M float32 values
SIGNAL_FACTOR_REASON = 0.9  # a factor below this is named among the reasons of a low score


def class_masks(codes: torch.Tensor, *, targets: Sequence[int]) -> torch.Tensor:
    """Boolean ``(targets, maps, voxels)``: for each target label value, where each map ``(maps, voxels)`` holds it.

    ``codes`` are label maps (uint8 argmax values) or, for a region model, booleans ``(maps, regions, voxels)``.
    """
    if codes.dtype == torch.bool:
        return codes.transpose(0, 1)
    return torch.stack([codes == value for value in targets])


class AgreementCounts:
    """Weighted co-occurrence of several label maps of one image (mirror passes or folds), per target.

    ``gram[t, a, b] = sum_v w(v) [map_a(v) = t] [map_b(v) = t]``: the pairwise Dice of maps ``a`` and ``b`` for target
    ``t`` is ``2 gram[t, a, b] / (gram[t, a, a] + gram[t, b, b])``. Tiles add their counts one after the other.
    """

    def __init__(self, *, num_targets: int, num_maps: int) -> None:
        self.gram = np.zeros((num_targets, num_maps, num_maps), dtype=np.float64)

    def add(self, masks: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add ``masks`` ``(targets, maps, voxels)`` (bool), weighted per voxel by ``weights`` ``(voxels,)``."""
        for first in range(0, masks.shape[2], CHUNK_VOXELS):
            chunk = slice(first, first + CHUNK_VOXELS)
            for target in range(masks.shape[0]):
                values = masks[target, :, chunk].float()
                weighted = values if weights is None else values * weights[chunk]
                self.gram[target] += (weighted @ values.T).double().cpu().numpy()

    def pairwise_dice(self) -> np.ndarray:
        """Mean pairwise Dice per target ``(targets,)``; 1 where no map holds the target (they agree it is absent)."""
        num_maps = self.gram.shape[1]
        result = np.ones(self.gram.shape[0])
        for target, gram in enumerate(self.gram):
            dice = [2 * gram[a, b] / (gram[a, a] + gram[b, b])
                    for a in range(num_maps) for b in range(a + 1, num_maps) if gram[a, a] + gram[b, b] > 0]
            if dice:
                result[target] = float(np.mean(dice))
        return result


def label_codes(output: torch.Tensor, *, uses_regions: bool) -> torch.Tensor:
    """A network output's label maps ``(B, voxels)`` (argmax, uint8) or region masks ``(B, regions, voxels)``."""
    if uses_regions:
        return output.flatten(2) > 0  # logit > 0 is probability > 0.5
    return output.max(1).indices.to(torch.uint8).flatten(1)  # max().indices: 10x faster than argmax on the CPU


class FlipAgreement:
    """Collects the mirror passes of each sliding-window batch and adds their agreement, tile by tile."""

    def __init__(self, *, targets: Sequence[int], num_flips: int, uses_regions: bool) -> None:
        self.targets = tuple(targets)
        self.uses_regions = uses_regions
        self.counts = AgreementCounts(num_targets=len(self.targets), num_maps=num_flips)
        self._batch: list[torch.Tensor] = []

    def observe(self, output: torch.Tensor) -> None:
        """One mirror pass of a batch (``(B, K, *patch)``, flipped back)."""
        self._batch.append(label_codes(output, uses_regions=self.uses_regions))

    def commit(self, importance: torch.Tensor) -> None:
        """Add the batch's passes, each tile weighted by the importance map; then forget them."""
        passes = torch.stack(self._batch, dim=1)  # (B, flips, voxels[, regions])
        weights = importance.flatten().to(passes.device)
        for tile in passes:
            self.counts.add(class_masks(tile, targets=self.targets), weights)
        self._batch = []


@dataclasses.dataclass
class NetworkSignals:
    """What one configuration's prediction of a case says about its quality, per target label value."""

    mirror_agreement: dict[int, float] | None = None
    fold_agreement: dict[int, float] | None = None
    confidence: float = math.nan
    confidence_foreground: float = math.nan
    entropy_foreground: float = math.nan

    @staticmethod
    def mean(signals: Sequence[NetworkSignals]) -> NetworkSignals:
        """Ensemble members' signals averaged (agreements target by target)."""
        def mean_maps(maps: list[dict[int, float] | None]) -> dict[int, float] | None:
            present = [entry for entry in maps if entry is not None]
            if not present:
                return None
            return {target: float(np.mean([entry[target] for entry in present])) for target in present[0]}

        return NetworkSignals(
            mirror_agreement=mean_maps([entry.mirror_agreement for entry in signals]),
            fold_agreement=mean_maps([entry.fold_agreement for entry in signals]),
            confidence=float(np.mean([entry.confidence for entry in signals])),
            confidence_foreground=float(np.nanmean([entry.confidence_foreground for entry in signals]))
            if any(not math.isnan(entry.confidence_foreground) for entry in signals) else math.nan,
            entropy_foreground=float(np.nanmean([entry.entropy_foreground for entry in signals]))
            if any(not math.isnan(entry.entropy_foreground) for entry in signals) else math.nan,
        )


def probability_signals(probabilities: torch.Tensor, *, uses_regions: bool) -> dict[str, float]:
    """Mean largest probability over all voxels and over the predicted foreground, and the mean normalised entropy
    (0 = certain, 1 = uniform) over the predicted foreground, of probabilities ``(K, z, y, x)``."""
    if uses_regions:
        certainty = torch.maximum(probabilities, 1 - probabilities).amin(0)
        foreground = (probabilities > 0.5).any(0)
        clipped = probabilities.clamp(1e-6, 1 - 1e-6)
        entropy = -(clipped * clipped.log() + (1 - clipped) * (1 - clipped).log()).amax(0) / math.log(2)
    else:
        certainty, labels = probabilities.max(0)
        foreground = labels > 0
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(0) / math.log(probabilities.shape[0])
    inside = int(foreground.sum())
    return {
        "confidence": float(certainty.mean()),
        "confidence_foreground": float(certainty[foreground].mean()) if inside else math.nan,
        "entropy_foreground": float(entropy[foreground].mean()) if inside else math.nan,
    }


@dataclasses.dataclass
class LabelMapStatistics:
    """Per target label value of a written label map: volume in mm^3 and the share in the largest component."""

    volumes_mm3: dict[int, float]
    largest_piece: dict[int, float]


def label_map_statistics(
    label_map: np.ndarray, *, spacing: Sequence[float], targets: Sequence[int]
) -> LabelMapStatistics:
    """Volumes and largest-component shares (face connectivity; 1 for an absent target) of ``label_map``."""
    voxel_volume = float(np.prod(spacing))
    counts = np.bincount(label_map.ravel(), minlength=max(targets) + 1)
    volumes, pieces = {}, {}
    for value in targets:
        volumes[value] = float(counts[value]) * voxel_volume
        if counts[value] == 0:
            pieces[value] = 1.0
            continue
        components, number = ndimage.label(label_map == value)
        sizes = np.bincount(components.ravel())[1:] if number else np.array([0])
        pieces[value] = float(sizes.max() / counts[value])
    return LabelMapStatistics(volumes, pieces)


@dataclasses.dataclass
class CaseQuality:
    """One case's quality: raw score, expected Dice (the calibrated score), per-class scores, reasons, flag."""

    case: str
    raw_score: float
    expected_dice: float
    per_class: dict[str, float]
    reasons: list[str]
    flagged: bool
    signals: NetworkSignals
    statistics: LabelMapStatistics


def assess_case(
    case: str,
    signals: NetworkSignals,
    statistics: LabelMapStatistics,
    *,
    target_names: dict[int, str],
    model: QualityModel | None,
    flag_below: float | None,
) -> CaseQuality:
    """Combine a case's signals into its quality (see the module's docstring for the rule)."""
    per_class, reasons = {}, []
    for value, name in target_names.items():
        factors = {
            "mirror passes agree": (signals.mirror_agreement or {}).get(value),
            "in its largest piece": statistics.largest_piece.get(value),
            "volume against training": model.volume_factor(value, statistics.volumes_mm3.get(value, 0.0))
            if model is not None else None,
        }
        present = {reason: factor for reason, factor in factors.items() if factor is not None}
        per_class[name] = float(np.prod(list(present.values()))) if present else 1.0
        reported = {**present, "folds agree": (signals.fold_agreement or {}).get(value)}
        reasons += [f"{name}: {reason} {factor:.2f}" for reason, factor in reported.items()
                    if factor is not None and factor < SIGNAL_FACTOR_REASON]
    raw = float(np.mean(list(per_class.values()))) if per_class else 1.0
    if not math.isnan(signals.confidence):
        raw *= signals.confidence
        if signals.confidence < SIGNAL_FACTOR_REASON:
            reasons.append(f"mean confidence {signals.confidence:.2f}")
    expected = model.expected_dice(raw) if model is not None else raw
    if signals.mirror_agreement is None and model is not None and model.calibrated:
        reasons.append("no mirror passes (--no-tta): the expected Dice misses its strongest signal and reads high")
    threshold = flag_below if flag_below is not None else (model.flag_below if model is not None else None)
    flagged = threshold is not None and expected < threshold
    return CaseQuality(case, raw, expected, per_class, reasons, flagged, signals, statistics)
