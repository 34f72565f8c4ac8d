"""The ``postprocessing.json`` record: which keep-largest-component steps to apply to every predicted label map.

The decision is data, never code::

    {"keep_largest_foreground": true, "keep_largest_per_class": [2, [1, 2]], "connectivity": "full", "evidence": {...}}

Each ``keep_largest_per_class`` item is a label value or, for a region, a list of label values. How a decision is
chosen on the cross-validation lives in ``autoseg.evaluation.postprocessing``; applying it is here, so that every
stage that writes label maps applies it the same way.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import UserError
from autoseg.utils.components import keep_largest_of_values
from autoseg.utils.files import read_json, write_json

LabelItem = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class PostprocessingDecision:
    """Keep the largest component of the whole foreground and/or of some classes (or regions)."""

    keep_largest_foreground: bool = False
    keep_largest_per_class: tuple[LabelItem, ...] = ()
    evidence: dict[str, Any] | None = None  # the Dice figures the decision was made on, for the report

    @classmethod
    def from_json(cls, data: Any, *, source: str = "post-processing decision") -> PostprocessingDecision:
        """Raises ``UserError`` naming ``source`` when a key is missing or has the wrong type."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: must be a JSON object with 'keep_largest_foreground' and "
                            "'keep_largest_per_class'.")
        foreground, per_class = data.get("keep_largest_foreground"), data.get("keep_largest_per_class")
        if not isinstance(foreground, bool):
            raise UserError(f"{source}: 'keep_largest_foreground' must be true or false.")
        if not isinstance(per_class, list) or not all(_is_label_item(item) for item in per_class):
            raise UserError(f"{source}: 'keep_largest_per_class' must be a list of label values or lists of them.")
        if data.get("connectivity", "full") != "full":
            raise UserError(f"{source}: only 'full' connectivity is supported.")
        items = tuple(tuple(item) if isinstance(item, list) else item for item in per_class)
        return cls(foreground, items, data.get("evidence"))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "keep_largest_foreground": self.keep_largest_foreground,
            "keep_largest_per_class": [list(item) if isinstance(item, tuple) else item
                                       for item in self.keep_largest_per_class],
            "connectivity": "full",
        }
        return data if self.evidence is None else {**data, "evidence": self.evidence}

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PostprocessingDecision:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: post-processing file not found.")
        try:
            data = read_json(path)
        except ValueError as error:
            raise UserError(f"{path}: is not valid JSON ({error}).") from None
        return cls.from_json(data, source=str(path))

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())

    def apply(self, label_map: np.ndarray) -> np.ndarray:
        """A new label map of the same shape and dtype (the foreground is every non-zero value)."""
        result = np.asarray(label_map)
        if self.keep_largest_foreground:
            foreground_values = [int(v) for v in np.unique(result) if v != 0]
            if foreground_values:
                result = keep_largest_of_values(result, foreground_values)
        for item in self.keep_largest_per_class:
            result = keep_largest_of_values(result, item if isinstance(item, tuple) else (item,))
        return result if result is not label_map else result.copy()


def _is_label_item(item: Any) -> bool:
    """A label value, or a non-empty list of label values (a region)."""
    def is_integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    return is_integer(item) or (isinstance(item, list) and bool(item) and all(is_integer(v) for v in item))
