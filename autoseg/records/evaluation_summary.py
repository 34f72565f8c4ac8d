"""The evaluation ``summary.json`` record: per-target means, the foreground mean and every case's metrics.

``autoseg.evaluation.folders`` writes it next to the predictions it scored (a fold's ``validation/``, a
configuration's or an ensemble's ``crossval/``); model selection, the report and the run read it back. ``to_json``
writes the keys as read, in their order, so a summary read and written again is unchanged.

Example:
    >>> summary = EvaluationSummary.from_json({"mean": {"1": {"name": "liver", "dice": 0.9}},
    ...                                        "foreground_mean": {"dice": 0.9}, "per_case": [{"case": "a"}]})
    >>> summary.foreground_dice, summary.dice_per_class, summary.cases, summary.per_case[0].case
    (0.9, {'liver': 0.9}, ['a'], 'a')
    >>> CaseEvaluation(metrics={"1": {"dice": 0.8}, "2": {"dice": 0.6}, "3": {"dice": None}}).mean_dice
    0.7
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.json_record import JsonRecord
from autoseg.utils.files import read_json, write_json

SUMMARY_FILE_NAME = "summary.json"


@dataclasses.dataclass(frozen=True)
class CaseEvaluation(JsonRecord):
    """One case: its prediction and reference files and ``metrics[target key][metric]`` (None where undefined)."""

    case: str = ""
    prediction: str = ""
    reference: str = ""
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def mean_dice(self) -> float | None:
        """The case's Dice averaged over its targets, skipping those where it is undefined (absent from both
        prediction and reference); None when it is undefined for every target."""
        values = [float(metrics["dice"]) for metrics in self.metrics.values() if metrics.get("dice") is not None]
        defined = [value for value in values if not math.isnan(value)]
        return sum(defined) / len(defined) if defined else None


@dataclasses.dataclass(frozen=True)
class EvaluationSummary(JsonRecord):
    """Means per target (keyed ``"1"`` or ``"1,2"`` for a region, each with its ``name``), the foreground mean, and
    every case's ``CaseEvaluation``."""

    prediction_folder: str | None = None
    reference_folder: str | None = None
    tolerance_mm: float | None = None
    ignore_label: int | None = None
    targets: tuple[dict[str, Any], ...] = ()
    mean: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    foreground_mean: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_case: tuple[CaseEvaluation, ...] = ()

    @classmethod
    def from_json(cls, data: Any, *, source: str = "evaluation summary") -> EvaluationSummary:
        per_case = data.get("per_case", []) if isinstance(data, dict) else None
        if not isinstance(per_case, list) or not all(isinstance(entry, dict) for entry in per_case):
            raise UserError(f"{source}: is not an evaluation summary; delete it and evaluate the predictions again.")
        parsed = super().from_json(data)
        return dataclasses.replace(parsed, per_case=tuple(CaseEvaluation.from_json(entry) for entry in per_case))

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if "per_case" in data:
            data["per_case"] = [entry.to_json() for entry in self.per_case]
        return data

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
        return [entry.case for entry in self.per_case]

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
        return cls.from_json(data, source=str(path))

    @classmethod
    def read_if_present(cls, path: str | os.PathLike[str]) -> EvaluationSummary | None:
        path = Path(path)
        return cls.read(path) if (path / SUMMARY_FILE_NAME if path.is_dir() else path).is_file() else None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())
