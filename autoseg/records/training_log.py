"""``log.jsonl``: the per-epoch training log of a fold, one JSON object per line (see docs/training.md for its keys).

Example:
    >>> write_log(LOG_FILE, [{"epoch": 0, "train_loss": 1.2}])
    >>> read_log(LOG_FILE)[0]["train_loss"]
    1.2
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoseg.utils.files import atomic_path, to_jsonable

LOG_FILE = "log.jsonl"


def write_log(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Rewrite the whole log atomically (one JSON object per line); it is small, and a resumed run truncates it to
    the epochs its checkpoint knows about, so the log never shows epochs whose weights were lost."""
    text = "".join(json.dumps(to_jsonable(record), allow_nan=False) + "\n" for record in records)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The epoch records of a log; an absent log has none."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
