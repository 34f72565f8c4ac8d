"""The ``fold_K.json`` record next to a cascade's out-of-fold previous-stage label maps (``WorkFolder.next_stage``).

Written after every map of the fold's validation cases, it says which checkpoint made them, so a retrained previous
stage (another SHA-256) or another split (other cases) makes them again::

    {"fold": 0, "checkpoint": ".../checkpoint_final.pt", "checkpoint_sha256": "...", "cases": ["case_a", ...]}
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.utils.files import read_json, write_json


@dataclasses.dataclass(frozen=True)
class PreviousStageMapsRecord:
    """Which checkpoint of the previous stage segmented which validation cases of one fold."""

    fold: int
    checkpoint: str
    checkpoint_sha256: str | None
    cases: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreviousStageMapsRecord:
        return cls(data.get("fold", -1), data.get("checkpoint", ""), data.get("checkpoint_sha256"),
                   data.get("cases"))

    def to_json(self) -> dict[str, Any]:
        return {"fold": self.fold, "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                "cases": self.cases}

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PreviousStageMapsRecord | None:
        """The record at ``path``, or None where there is none yet."""
        path = Path(path)
        return cls.from_json(read_json(path)) if path.is_file() else None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())

    def made_by(self, checkpoint_sha256: str, cases: list[str]) -> bool:
        """True when these maps were made by that checkpoint for exactly those cases (still valid)."""
        return self.checkpoint_sha256 == checkpoint_sha256 and self.cases == cases
