"""A preprocessed case on disk, spelled once: ``CASE.npy``, ``CASE_seg.npy`` and ``CASE.json`` in one folder.

``CASE.npy`` holds the image (float32, ``(C, z, y, x)``), ``CASE_seg.npy`` the labels (int8, ``(1, z, y, x)``) and
``CASE.json`` the case's properties (shape after resampling, class locations, ...). Preprocessing writes the
properties last, so their presence means the case is complete; training memory-maps the arrays.

A large case (``autoseg.io.case_arrays.COMPRESS_FROM_BYTES``) has ``CASE.b2nd`` and ``CASE_seg.b2nd`` instead:
the same arrays, compressed losslessly in patch-sized chunks (docs/preprocessing.md, "Storage"). A case has one
format or the other; ``open_image``/``open_segmentation`` open whichever it has for partial reads.

Example:
    >>> case = PreprocessedCase.at("preprocessed/3d_fullres", "hippocampus_001")
    >>> case.image_path.name, case.segmentation_path.name, case.properties_path.name
    ('hippocampus_001.npy', 'hippocampus_001_seg.npy', 'hippocampus_001.json')
    >>> case.compressed_image_path.name, case.compressed_segmentation_path.name
    ('hippocampus_001.b2nd', 'hippocampus_001_seg.b2nd')
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.io.case_arrays import COMPRESSED_ENDING, NPY_ENDING, open_array
from autoseg.utils.files import read_json

IMAGE_ENDING = NPY_ENDING
SEGMENTATION_ENDING = "_seg.npy"
COMPRESSED_IMAGE_ENDING = COMPRESSED_ENDING
COMPRESSED_SEGMENTATION_ENDING = "_seg.b2nd"
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

    @property
    def compressed_image_path(self) -> Path:
        return self.folder / f"{self.identifier}{COMPRESSED_IMAGE_ENDING}"

    @property
    def compressed_segmentation_path(self) -> Path:
        return self.folder / f"{self.identifier}{COMPRESSED_SEGMENTATION_ENDING}"

    @property
    def array_paths(self) -> tuple[Path, Path, Path, Path]:
        """Every array file the case may have, in either format."""
        return self.image_path, self.segmentation_path, self.compressed_image_path, self.compressed_segmentation_path

    @property
    def is_compressed(self) -> bool:
        """Whether the case is stored compressed (``CASE.b2nd``) rather than as ``CASE.npy``."""
        return self.compressed_image_path.is_file()

    @property
    def stored_image_path(self) -> Path:
        """The image file the case has: ``CASE.b2nd`` when compressed, else ``CASE.npy``."""
        return self.compressed_image_path if self.is_compressed else self.image_path

    @property
    def stored_segmentation_path(self) -> Path:
        """The label file in the image's format: ``CASE_seg.b2nd`` when compressed, else ``CASE_seg.npy``."""
        return self.compressed_segmentation_path if self.is_compressed else self.segmentation_path

    def open_image(self) -> Any:
        """The image opened read-only for partial reads (memory-mapped ``.npy`` or ``blosc2.NDArray``)."""
        return open_array(self.stored_image_path)

    def open_segmentation(self) -> Any:
        """The labels opened read-only for partial reads, like ``open_image``."""
        return open_array(self.stored_segmentation_path)

    def read_properties(self) -> dict[str, Any]:
        """The case's ``CASE.json``; ``CorruptFileError`` (a ``ValueError``) when it is not valid JSON."""
        return read_json(self.properties_path)


def preprocessed_case_ids(folder: str | os.PathLike[str]) -> list[str]:
    """Identifiers of the cases in ``folder`` that have their properties file (complete cases), sorted."""
    return sorted(path.name[: -len(PROPERTIES_ENDING)] for path in Path(folder).glob(f"*{PROPERTIES_ENDING}"))


def previous_stage_map_path(folder: str | os.PathLike[str], identifier: str, *, compressed: bool | None = None) -> Path:
    """A cascade's previous-stage label map of a case in the next-stage folder: ``CASE.b2nd`` when ``compressed``,
    ``CASE.npy`` when not; by default whichever exists (``CASE.npy`` when neither does)."""
    compressed_path = Path(folder) / f"{identifier}{COMPRESSED_IMAGE_ENDING}"
    if compressed is None:
        compressed = compressed_path.is_file()
    return compressed_path if compressed else Path(folder) / f"{identifier}{IMAGE_ENDING}"
