"""Is an adapted prediction plausible? Compared with the unadapted one and with the model on its training images.

``train-adapter`` records, for every training image it sees, the predicted foreground fraction of each output
channel and the mean per-voxel entropy (``PredictionSummary``); ``SourceRanges`` keeps their ranges. An adapted
prediction is refused (the case keeps its unadapted prediction) when

- a foreground fraction leaves the training range widened by ``FRACTION_MARGIN`` of that range on each side and lies
  further from it than the unadapted prediction's (adaptation made the volume less plausible), or
- its mean entropy exceeds both the unadapted prediction's and ``ENTROPY_MARGIN`` times the largest training entropy
  (adaptation made the network less sure, beyond anything seen on the training images), or
- its mean entropy exceeds ``ENTROPY_RISE`` times the unadapted prediction's: adaptation exists to bring an image
  back to what the network knows, which makes it surer, not less sure. (On clean HC18 images, the adapted
  predictions that lost Dice were the ones whose entropy rose by half or more.)
"""

from __future__ import annotations

import dataclasses

import torch

from autoseg.inference.adaptation.segmenter import mean_entropy

FRACTION_MARGIN = 0.25
ENTROPY_MARGIN = 1.5
ENTROPY_RISE = 1.25


@dataclasses.dataclass(frozen=True)
class PredictionSummary:
    """Foreground fraction of every foreground output channel and the mean per-voxel entropy of one prediction."""

    foreground_fractions: tuple[float, ...]
    mean_entropy: float

    @classmethod
    def of(cls, probabilities: torch.Tensor, *, uses_regions: bool) -> PredictionSummary:
        """Summary of ``(K, ...)`` probabilities (class 0 is background unless the model predicts regions)."""
        probabilities = torch.as_tensor(probabilities).float()
        if uses_regions:
            fractions = (probabilities > 0.5).float().flatten(1).mean(1)
        else:
            winners = probabilities.argmax(0)
            fractions = torch.stack([(winners == k).float().mean() for k in range(1, probabilities.shape[0])])
        entropy = mean_entropy(probabilities[None], uses_regions=uses_regions)
        return cls(tuple(round(float(f), 6) for f in fractions), round(float(entropy), 6))

    def to_dict(self) -> dict:
        return {"foreground_fractions": list(self.foreground_fractions), "mean_entropy": self.mean_entropy}


@dataclasses.dataclass(frozen=True)
class SourceRanges:
    """Per foreground channel the lowest and highest predicted fraction, and the highest mean entropy, over the
    training images ``train-adapter`` saw."""

    fraction_low: tuple[float, ...]
    fraction_high: tuple[float, ...]
    entropy_high: float
    images: int

    @classmethod
    def of(cls, summaries: list[PredictionSummary]) -> SourceRanges:
        fractions = torch.tensor([summary.foreground_fractions for summary in summaries], dtype=torch.float64)
        return cls(
            tuple(float(v) for v in fractions.min(0).values), tuple(float(v) for v in fractions.max(0).values),
            max(summary.mean_entropy for summary in summaries), len(summaries),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"fraction_low": list(self.fraction_low),
                                            "fraction_high": list(self.fraction_high)}

    @classmethod
    def from_dict(cls, data: dict) -> SourceRanges:
        return cls(tuple(data["fraction_low"]), tuple(data["fraction_high"]), float(data["entropy_high"]),
                   int(data["images"]))

    def _distance_outside(self, channel: int, fraction: float) -> float:
        """How far ``fraction`` lies outside the widened range of ``channel`` (0 inside)."""
        low, high = self.fraction_low[channel], self.fraction_high[channel]
        margin = FRACTION_MARGIN * (high - low)
        return max(0.0, (low - margin) - fraction, fraction - (high + margin))

    def problems(self, adapted: PredictionSummary, unadapted: PredictionSummary) -> list[str]:
        """Why ``adapted`` is implausible (empty when it is plausible), one sentence per reason."""
        reasons = []
        for channel, (after, before) in enumerate(
            zip(adapted.foreground_fractions, unadapted.foreground_fractions, strict=True)
        ):
            outside = self._distance_outside(channel, after)
            if outside > 0 and outside > self._distance_outside(channel, before):
                reasons.append(
                    f"foreground fraction of channel {channel + 1} went from {before:.4f} to {after:.4f}, outside "
                    f"the training range {self.fraction_low[channel]:.4f}-{self.fraction_high[channel]:.4f}"
                )
        if adapted.mean_entropy > max(unadapted.mean_entropy, ENTROPY_MARGIN * self.entropy_high):
            reasons.append(
                f"mean entropy rose from {unadapted.mean_entropy:.4f} to {adapted.mean_entropy:.4f}, above "
                f"{ENTROPY_MARGIN} x the largest seen on training images ({self.entropy_high:.4f})"
            )
        elif adapted.mean_entropy > ENTROPY_RISE * unadapted.mean_entropy:
            reasons.append(
                f"mean entropy rose from {unadapted.mean_entropy:.4f} to {adapted.mean_entropy:.4f}, more than "
                f"{ENTROPY_RISE} x: adaptation made the network less sure of this image"
            )
        return reasons
