"""What is evaluated: one target per class (a label value) or per region (a set of label values), and the ignore label.

A target's mask in a label map is ``isin(label_map, target.values)``. For ordinary datasets every target is one
class; for region-based datasets (``"labels": {"whole tumour": [1, 2, 3], ...}``) every region is evaluated as its
own mask, the way it was trained. Voxels where the reference holds the ignore label are excluded from every target.

Example:
    >>> targets_from_label_values([1, 2])[1].key
    '2'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.records.dataset import read_dataset_json


@dataclasses.dataclass(frozen=True)
class EvaluationTarget:
    """One evaluated class or region: a readable name and the label values that form its mask."""

    name: str
    values: tuple[int, ...]

    @property
    def key(self) -> str:
        """Stable identifier used in summary.json and metrics.csv: ``"1"`` for a class, ``"1,2,3"`` for a region."""
        return ",".join(str(value) for value in self.values)

    def mask(self, label_map: np.ndarray) -> np.ndarray:
        return np.isin(label_map, self.values)

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "values": list(self.values)}


def targets_from_label_values(values: Iterable[int]) -> tuple[EvaluationTarget, ...]:
    """One class target per distinct non-zero label value, named after the value."""
    chosen = sorted({int(value) for value in values if int(value) != 0})
    return tuple(EvaluationTarget(name=str(value), values=(value,)) for value in chosen)


def targets_from_labels_mapping(labels: dict, *, source: str) -> tuple[tuple[EvaluationTarget, ...], int | None]:
    """Targets and ignore label from a ``dataset.json``-style ``labels`` mapping (name -> int or list of ints).

    Raises:
        UserError: the mapping is not of that form (``source`` names the file in the message).
    """
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{source}: 'labels' must be a non-empty mapping of label name to value.")
    targets = []
    ignore_label = None
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
            raise UserError(f"{source}: label {name!r} must be an integer or a list of integers.")
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UserError(f"{source}: label {name!r} must be an integer or a non-empty list of integers.")
        if name == "background":
            continue
        if name == "ignore":
            ignore_label = values[0]
            continue
        targets.append(EvaluationTarget(name=str(name), values=tuple(int(v) for v in values)))
    if not targets:
        raise UserError(f"{source}: 'labels' declares no foreground class.")
    return tuple(targets), ignore_label


def targets_from_dataset_json(path: str | os.PathLike[str]) -> tuple[tuple[EvaluationTarget, ...], int | None]:
    """Targets and ignore label from a raw ``dataset.json`` or the working folder's copy (``RawDataset.to_dict()``)."""
    path = Path(path)
    try:
        data = read_dataset_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: dataset.json not found.") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: is not readable JSON ({error}).") from None
    if not isinstance(data, dict) or "labels" not in data:
        raise UserError(f"{path}: has no 'labels' entry; pass a dataset.json or give the labels with --labels.")
    targets, ignore_label = targets_from_labels_mapping(data["labels"], source=str(path))
    if data.get("ignore_label") is not None:
        ignore_label = int(data["ignore_label"])
    return targets, ignore_label


def describe_targets(targets: Sequence[EvaluationTarget]) -> list[dict]:
    return [target.to_dict() for target in targets]
