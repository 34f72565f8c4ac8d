"""The per-epoch training log (``log.jsonl``, written and read by ``autoseg.records.training_log``) and the moving
average that selects the best checkpoint."""

from __future__ import annotations

from autoseg.records.training_log import LOG_FILE, read_log, write_log

PSEUDO_DICE_SMOOTHING = 0.9


def update_moving_average(previous: float | None, value: float, *, smoothing: float = PSEUDO_DICE_SMOOTHING) -> float:
    """Exponential moving average ``smoothing * previous + (1 - smoothing) * value`` (starts at the first value).

    Patch-based pseudo-Dice is noisy from epoch to epoch; the average keeps one lucky epoch from becoming "best".
    """
    return value if previous is None else smoothing * previous + (1 - smoothing) * value


__all__ = ["LOG_FILE", "PSEUDO_DICE_SMOOTHING", "read_log", "update_moving_average", "write_log"]
