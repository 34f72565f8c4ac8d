"""The raw dataset record: a dataset folder in the nnU-Net v2 convention as a typed, JSON-serialisable description.

``RawDataset`` is what ``dataset.json`` and the file layout say (``autoseg.data.raw_folder`` reads a folder into it);
a working folder keeps it as its own ``dataset.json`` (``to_dict`` / ``from_dict``), so later stages never re-read
the raw folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its identifier, one image path per channel, and its label path (None for test cases)."""

    identifier: str
    images: tuple[str, ...]
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, named by case and file so the user can find it."""

    severity: str  # "error" or "warning"
    message: str
    case: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = ", ".join(part for part in (f"case {self.case}" if self.case else None, self.path) if part)
        return f"{self.severity.upper()}: {where + ': ' if where else ''}{self.message}"


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """Typed description of a raw dataset folder (what ``dataset.json`` and the file layout say)."""

    root: str
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int | tuple[int, ...]]
    file_ending: str
    num_training: int
    training_cases: tuple[Case, ...]
    test_cases: tuple[Case, ...] = ()
    regions_class_order: tuple[int, ...] | None = None
    ignore_label: int | None = None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(value, tuple) for name, value in self.labels.items() if name != "background")

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Integer label values of the foreground classes (not background, not ignore), sorted."""
        values: set[int] = set()
        for name, value in self.labels.items():
            if name in ("background", "ignore"):
                continue
            values.update(value if isinstance(value, tuple) else (value,))
        return tuple(sorted(values))

    @property
    def declared_label_values(self) -> tuple[int, ...]:
        """Every value a label file may contain: background, classes and the ignore label."""
        values = {0, *self.foreground_labels}
        if self.ignore_label is not None:
            values.add(self.ignore_label)
        return tuple(sorted(values))

    @property
    def regions(self) -> tuple[tuple[int, ...], ...]:
        """Training targets in output-channel order: one tuple of label values per output channel.

        For ordinary classes each region is a single value; with regions each is the declared list.
        """
        items = [
            (value if isinstance(value, tuple) else (value,))
            for name, value in self.labels.items()
            if name not in ("background", "ignore")
        ]
        return tuple(items)

    @property
    def num_output_channels(self) -> int:
        """Network outputs: one per region (sigmoid) or one per class plus background (softmax)."""
        return len(self.regions) if self.has_regions else len(self.foreground_labels) + 1

    def case(self, identifier: str) -> Case:
        for case in self.training_cases + self.test_cases:
            if case.identifier == identifier:
                return case
        raise KeyError(identifier)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["labels"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.labels.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RawDataset:
        return cls(
            root=data["root"],
            name=data["name"],
            channel_names=tuple(data["channel_names"]),
            labels={k: tuple(v) if isinstance(v, list) else int(v) for k, v in data["labels"].items()},
            file_ending=data["file_ending"],
            num_training=int(data["num_training"]),
            training_cases=tuple(
                Case(c["identifier"], tuple(c["images"]), c.get("label")) for c in data["training_cases"]
            ),
            test_cases=tuple(Case(c["identifier"], tuple(c["images"]), c.get("label")) for c in data["test_cases"]),
            regions_class_order=tuple(data["regions_class_order"]) if data.get("regions_class_order") else None,
            ignore_label=data.get("ignore_label"),
        )


def read_dataset_json(path: str | os.PathLike[str]) -> Any:
    """What a ``dataset.json`` holds (a raw dataset's, an MSD task's or a working folder's copy), as written.

    Raises ``FileNotFoundError`` / ``OSError``, ``json.JSONDecodeError`` or ``UnicodeDecodeError`` (both
    ``ValueError``) for the caller to word for its context: a raw folder's problems are listed, not raised.
    """
    return json.loads(Path(path).read_text(encoding="utf-8"))
