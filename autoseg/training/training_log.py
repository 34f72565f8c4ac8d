"""The moving average of the pseudo-Dice that selects the best checkpoint (the per-epoch log itself, ``log.jsonl``, is
written and read by ``autoseg.records.training_log``)."""

from __future__ import annotations

PSEUDO_DICE_SMOOTHING = 0.9


def update_moving_average(previous: float | None, value: float, *, smoothing: float = PSEUDO_DICE_SMOOTHING) -> float:
    """Exponential moving average ``smoothing * previous + (1 - smoothing) * value`` (starts at the first value).

    Patch-based pseudo-Dice is noisy from epoch to epoch; the average keeps one lucky epoch from becoming "best".
    """
    return value if previous is None else smoothing * previous + (1 - smoothing) * value


__all__ = ["PSEUDO_DICE_SMOOTHING", "update_moving_average"]
