"""``quality.csv``: every predicted case's quality estimate, in the folder of its label map.

Columns: ``case``, ``expected_dice`` (the calibrated score, or the raw score before model selection fitted a
calibration), ``raw_score``, ``flagged`` (1 when ``expected_dice`` is below the threshold), ``reasons`` (the signals
behind a low score, ``; ``-separated), then per class ``score_NAME``, ``mirror_NAME``, ``folds_NAME``,
``piece_NAME`` and ``volume_mm3_NAME``, and the case's ``confidence``, ``confidence_foreground`` and
``entropy_foreground`` (see ``autoseg.inference.quality``). Rows of cases predicted earlier (``--skip-existing``)
are kept; the file is replaced atomically.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
from collections.abc import Sequence
from pathlib import Path

from autoseg.inference.quality import CaseQuality
from autoseg.utils.files import atomic_path

QUALITY_FILE = "quality.csv"


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def quality_row(quality: CaseQuality, target_names: dict[int, str]) -> dict[str, str]:
    """One case's row of ``quality.csv``."""
    signals, statistics = quality.signals, quality.statistics
    row = {
        "case": quality.case, "expected_dice": _number(quality.expected_dice), "raw_score": _number(quality.raw_score),
        "flagged": str(int(quality.flagged)), "reasons": "; ".join(quality.reasons),
    }
    for value, name in target_names.items():
        row[f"score_{name}"] = _number(quality.per_class.get(name))
        row[f"mirror_{name}"] = _number((signals.mirror_agreement or {}).get(value))
        row[f"folds_{name}"] = _number((signals.fold_agreement or {}).get(value))
        row[f"piece_{name}"] = _number(statistics.largest_piece.get(value))
        row[f"volume_mm3_{name}"] = _number(statistics.volumes_mm3.get(value))
    row["confidence"] = _number(signals.confidence)
    row["confidence_foreground"] = _number(signals.confidence_foreground)
    row["entropy_foreground"] = _number(signals.entropy_foreground)
    return row


def read_quality_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a ``quality.csv`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_quality_table(path: str | os.PathLike[str], rows: Sequence[dict[str, str]]) -> None:
    """Write ``rows`` (after the rows already there for other cases), sorted by case. The parts of a sharded
    prediction (``--part-id``) merge one after the other: a lock next to the table is held while merging."""
    path = Path(path)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a part that is merging now (a few milliseconds)
        _merge_rows(path, rows)


def _merge_rows(path: Path, rows: Sequence[dict[str, str]]) -> None:
    by_case = {row["case"]: row for row in read_quality_table(path)}
    by_case.update({row["case"]: row for row in rows})
    if not by_case:
        return
    columns = list(rows[0]) if rows else list(next(iter(by_case.values())))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for case in sorted(by_case):
            writer.writerow(by_case[case])


def flagged_cases(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The flagged rows, lowest expected Dice first."""
    flagged = [row for row in rows if row.get("flagged") == "1"]
    return sorted(flagged, key=lambda row: float(row["expected_dice"] or 0.0))
