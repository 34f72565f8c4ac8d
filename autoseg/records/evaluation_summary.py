"""The evaluation ``summary.json`` record: per-target means, the foreground mean and every case's metrics.

``autoseg.evaluation.folders`` writes it next to the predictions it scored (a fold's ``validation/``, a
configuration's or an ensemble's ``crossval/``); model selection, the report and the run read it back. ``to_json``
writes the keys as read, in their order, so a summary read and written again is unchanged.

Example:
    >>> summary = EvaluationSummary.from_json({"mean": {"1": {"name": "liver", "dice": 0.9}},
    ...                                        "foreground_mean": {"dice": 0.9}, "per_case": [{"case": "a"}]})
    >>> summary.foreground_dice, summary.dice_per_class, summary.cases
    (0.9, {'liver': 0.9}, ['a'])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.json_record import JsonRecord
from autoseg.utils.files import read_json, write_json

SUMMARY_FILE_NAME = "summary.json"


@dataclasses.dataclass(frozen=True)
class EvaluationSummary(JsonRecord):
    """Means per target (keyed ``"1"`` or ``"1,2"`` for a region, each with its ``name``), the foreground mean, and
    per case ``{"case", "prediction", "reference", "metrics": {target key: {metric: value}}}``."""

    prediction_folder: str | None = None
    reference_folder: str | None = None
    tolerance_mm: float | None = None
    ignore_label: int | None = None
    targets: tuple[dict[str, Any], ...] = ()
    mean: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    foreground_mean: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_case: tuple[dict[str, Any], ...] = ()

    @property
    def foreground_dice(self) -> float | None:
        """The mean foreground Dice (None when no case had foreground anywhere)."""
        return self.foreground_mean.get("dice")

    @property
    def dice_per_class(self) -> dict[str, float | None]:
        """Mean Dice by target name."""
        return {entry["name"]: entry.get("dice") for entry in self.mean.values()}

    @property
    def cases(self) -> list[str]:
        return [entry["case"] for entry in self.per_case]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EvaluationSummary:
        """The summary at ``path`` (a ``summary.json`` or the folder holding one); ``UserError`` if unusable."""
        path = Path(path)
        if path.is_dir():
            path = path / SUMMARY_FILE_NAME
        if not path.is_file():
            raise UserError(f"{path}: no evaluation summary; evaluate the predictions first.")
        try:
            data = read_json(path)
        except ValueError:
            raise UserError(f"{path}: is not valid JSON; delete it and evaluate the predictions again.") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: is not an evaluation summary; delete it and evaluate the predictions again.")
        return cls.from_json(data)

    @classmethod
    def read_if_present(cls, path: str | os.PathLike[str]) -> EvaluationSummary | None:
        path = Path(path)
        return cls.read(path) if (path / SUMMARY_FILE_NAME if path.is_dir() else path).is_file() else None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())
