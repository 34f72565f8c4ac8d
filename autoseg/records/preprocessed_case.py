"""A preprocessed case on disk, spelled once: ``CASE.npy``, ``CASE_seg.npy`` and ``CASE.json`` in one folder.

``CASE.npy`` holds the image (float32, ``(C, z, y, x)``), ``CASE_seg.npy`` the labels (int8, ``(1, z, y, x)``) and
``CASE.json`` the case's properties (shape after resampling, class locations, ...). Preprocessing writes the
properties last, so their presence means the case is complete; training memory-maps the arrays.

Example:
    >>> case = PreprocessedCase.at("preprocessed/3d_fullres", "hippocampus_001")
    >>> case.image_path.name, case.segmentation_path.name, case.properties_path.name
    ('hippocampus_001.npy', 'hippocampus_001_seg.npy', 'hippocampus_001.json')
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.utils.files import read_json

IMAGE_ENDING = ".npy"
SEGMENTATION_ENDING = "_seg.npy"
PROPERTIES_ENDING = ".json"


@dataclasses.dataclass(frozen=True)
class PreprocessedCase:
    """The files of one preprocessed case ``identifier`` inside ``folder``."""

    folder: Path
    identifier: str

    @classmethod
    def at(cls, folder: str | os.PathLike[str], identifier: str) -> PreprocessedCase:
        return cls(Path(folder), identifier)

    @property
    def image_path(self) -> Path:
        return self.folder / f"{self.identifier}{IMAGE_ENDING}"

    @property
    def segmentation_path(self) -> Path:
        return self.folder / f"{self.identifier}{SEGMENTATION_ENDING}"

    @property
    def properties_path(self) -> Path:
        return self.folder / f"{self.identifier}{PROPERTIES_ENDING}"

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """``(CASE.npy, CASE_seg.npy, CASE.json)``."""
        return self.image_path, self.segmentation_path, self.properties_path

    def read_properties(self) -> dict[str, Any]:
        """The case's ``CASE.json``; ``CorruptFileError`` (a ``ValueError``) when it is not valid JSON."""
        return read_json(self.properties_path)


def preprocessed_case_ids(folder: str | os.PathLike[str]) -> list[str]:
    """Identifiers of the cases in ``folder`` that have their properties file (complete cases), sorted."""
    return sorted(path.name[: -len(PROPERTIES_ENDING)] for path in Path(folder).glob(f"*{PROPERTIES_ENDING}"))


def previous_stage_map_path(folder: str | os.PathLike[str], identifier: str) -> Path:
    """A cascade's previous-stage label map of a case, ``CASE.npy`` in the next-stage folder."""
    return Path(folder) / f"{identifier}{IMAGE_ENDING}"
