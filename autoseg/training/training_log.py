"""The per-epoch training log (``log.jsonl``) and the moving average that selects the best checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoseg.utils.files import atomic_path, to_jsonable

LOG_FILE = "log.jsonl"
PSEUDO_DICE_SMOOTHING = 0.9


def update_moving_average(previous: float | None, value: float, *, smoothing: float = PSEUDO_DICE_SMOOTHING) -> float:
    """Exponential moving average ``smoothing * previous + (1 - smoothing) * value`` (starts at the first value).

    Patch-based pseudo-Dice is noisy from epoch to epoch; the average keeps one lucky epoch from becoming "best".
    """
    return value if previous is None else smoothing * previous + (1 - smoothing) * value


def write_log(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Rewrite the whole log atomically (one JSON object per line); it is small, and a resumed run truncates it to
    the epochs its checkpoint knows about, so the log never shows epochs whose weights were lost."""
    text = "".join(json.dumps(to_jsonable(record), allow_nan=False) + "\n" for record in records)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
