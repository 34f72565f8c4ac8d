"""The ``fingerprint.json`` record: what the raw data is, as the planner saw it (versioned).

``Fingerprint`` holds ``fingerprint_version``, ``inputs_signature``, ``is_2d``, ``cases`` (per case: spacing, shapes,
crop, class voxels), ``case_signatures`` (per case: a hash of its files' paths, sizes and times) and the intensity
statistics per channel. ``to_json`` writes back the keys that were read, in their order, so a file read and written
again is unchanged; a file of an older autoseg may lack keys (they read as None or empty).

Example:
    >>> fingerprint = Fingerprint.from_json({"is_2d": False, "cases": {"a": {"shape": [1, 4, 4]}}})
    >>> fingerprint.is_2d, fingerprint.cases["a"].shape, fingerprint.to_json()["cases"]
    (False, (1, 4, 4), {'a': {'shape': [1, 4, 4]}})
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.json_record import JsonRecord
from autoseg.utils.files import read_json, write_json

# Bump when the content or meaning of fingerprint.json changes, so old files are recomputed rather than trusted.
# 2: per-case input signatures (``case_signatures``), so later stages can name the cases that changed.
FINGERPRINT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class FingerprintCase(JsonRecord):
    """One training case as fingerprinted: geometry in (z, y, x), the crop to its non-zero region, its classes."""

    spacing: tuple[float, ...] | None = None
    shape: tuple[int, ...] | None = None
    shape_after_crop: tuple[int, ...] | None = None
    relative_size_after_crop: float | None = None
    class_voxels: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class IntensityStatistics(JsonRecord):
    """One channel's intensities inside the labelled voxels of every case (sampled; all zero when none)."""

    mean: float = 0.0
    std: float = 0.0
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0
    percentile_00_5: float = 0.0
    percentile_99_5: float = 0.0
    num_samples: int = 0


@dataclasses.dataclass(frozen=True)
class ClassPresence(JsonRecord):
    """One label value over the dataset: its voxels in all cases together, and how many cases hold it."""

    total_voxels: int = 0
    cases_present: int = 0


@dataclasses.dataclass(frozen=True)
class Fingerprint(JsonRecord):
    """The whole ``fingerprint.json``; keys an older file lacks are None (``cases``: empty)."""

    autoseg_version: str | None = None
    fingerprint_version: int | None = None
    inputs_signature: str | None = None
    dataset_name: str | None = None
    is_2d: bool | None = None
    channel_names: tuple[str, ...] | None = None
    num_cases: int | None = None
    cases: dict[str, FingerprintCase] = dataclasses.field(default_factory=dict)
    case_signatures: dict[str, str] | None = None
    foreground_intensities: dict[str, IntensityStatistics] | None = None  # per channel index ("0", "1", ...)
    classes: dict[str, ClassPresence] | None = None  # per foreground label value ("1", "2", ...)
    median_spacing: tuple[float, ...] | None = None
    median_shape_after_crop: tuple[float, ...] | None = None
    median_relative_size_after_crop: float | None = None

    @classmethod
    def from_json(cls, data: Any, *, source: str = "fingerprint") -> Fingerprint:
        if not isinstance(data, dict) or not isinstance(data.get("cases", {}), dict):
            raise UserError(f"{source}: is not a fingerprint; delete it and run `autoseg plan DATASET` again.")
        parsed = super().from_json(data)
        nested = {key: _records_of(record, data[key]) for key, record in _NESTED.items() if data.get(key) is not None}
        return dataclasses.replace(parsed, **nested)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        for key in _NESTED:
            if data.get(key) is not None:
                data[key] = {name: record.to_json() for name, record in getattr(self, key).items()}
        return data

    def is_current(self, signature: str) -> bool:
        """Whether this fingerprint was made by this autoseg's rules from inputs with ``signature``."""
        return self.inputs_signature == signature and self.fingerprint_version == FINGERPRINT_VERSION

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())


# Mappings of the fingerprint whose values are records of their own.
_NESTED: dict[str, type[JsonRecord]] = {
    "cases": FingerprintCase, "foreground_intensities": IntensityStatistics, "classes": ClassPresence,
}


def _records_of(record: type[JsonRecord], entries: Any) -> dict[str, Any]:
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        raise UserError(f"fingerprint: {record.__name__} entries must be JSON objects; run `autoseg plan` again.")
    return {name: record.from_json(entry) for name, entry in entries.items()}


def load_fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Read a ``fingerprint.json``; a missing or unreadable file is a user error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no fingerprint found; run `autoseg plan DATASET` first.")
    try:
        data = read_json(path)
    except ValueError:
        raise UserError(f"{path}: is not valid JSON; delete it and run `autoseg plan DATASET` again.") from None
    return Fingerprint.from_json(data, source=str(path))


def cached_fingerprint(path: str | os.PathLike[str], signature: str) -> Fingerprint | None:
    """The fingerprint at ``path`` when it is current for ``signature``; None when absent, unreadable or stale."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cached = read_json(path)
    except ValueError:
        return None
    if not isinstance(cached, dict):
        return None
    fingerprint = Fingerprint.from_json(cached, source=str(path))
    return fingerprint if fingerprint.is_current(signature) else None
