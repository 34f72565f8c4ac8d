"""The preprocessed cases a training loader draws from: files checked once, class locations read.

A case's files are named by ``autoseg.records.preprocessed_case``; a damaged or missing file is refused here, when the
loader is made, rather than at random in a loader worker whenever a patch of that case is drawn.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.io.case_arrays import open_array
from autoseg.records.preprocessed_case import PreprocessedCase, previous_stage_map_path
from autoseg.transforms.class_locations import ANNOTATED


@dataclasses.dataclass
class TrainingCase:
    """One complete preprocessed case as the patch sampler uses it: its files and its class locations."""

    stored: PreprocessedCase
    class_locations: dict[int, np.ndarray]  # label -> (N, 3) voxel indices (z, y, x) in the stored arrays
    previous_stage_path: Path | None = None  # cascade: the previous stage's label map on this grid
    annotated_locations: np.ndarray | None = None  # ignore label: (N, 3) indices of annotated voxels, if sampled

    @property
    def identifier(self) -> str:
        return self.stored.identifier

    @property
    def image_path(self) -> Path:
        """The image file the case has (``CASE.npy``, or ``CASE.b2nd`` when stored compressed)."""
        return self.stored.stored_image_path

    @property
    def segmentation_path(self) -> Path:
        return self.stored.stored_segmentation_path


def load_training_cases(
    preprocessed_folder: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    previous_stage_folder: str | os.PathLike[str] | None = None,
) -> list[TrainingCase]:
    """Read ``CASE.json`` of every case; a missing file (incomplete preprocessing) is a ``UserError`` naming it.

    ``previous_stage_folder`` (cascade) holds each case's previous-stage label map ``CASE.npy`` (or ``CASE.b2nd``)."""
    folder = Path(preprocessed_folder)
    if not case_ids:
        raise UserError(f"no cases to load from {folder}")
    cases = []
    for identifier in case_ids:
        stored = PreprocessedCase.at(folder, identifier)
        previous_path = None if previous_stage_folder is None else previous_stage_map_path(previous_stage_folder,
                                                                                            identifier)
        for path in (stored.properties_path, stored.stored_image_path, stored.stored_segmentation_path):
            if not path.is_file():
                raise UserError(f"{path} is missing: preprocess the dataset (again) before training")
        if previous_path is not None and not previous_path.is_file():
            raise UserError(f"{previous_path} is missing: the previous stage's segmentations are incomplete")
        properties = _read_intact_case(stored)
        locations = {
            key: np.asarray(points, dtype=np.int64).reshape(-1, 3)
            for key, points in properties.get("class_locations", {}).items()
        }
        annotated = locations.pop(ANNOTATED, None)
        locations = {int(label): points for label, points in locations.items()}
        cases.append(TrainingCase(stored, locations, previous_path, annotated))
    return cases


def _read_intact_case(case: PreprocessedCase) -> dict:
    """The properties of a case whose arrays open (headers only, either format) with the shape they record.

    A damaged file would otherwise fail at random in a loader worker, whenever a patch of that case is drawn.
    """
    redo = "run `autoseg preprocess` again to redo it (damaged cases are redone)."
    try:
        properties = case.read_properties()
    except ValueError:
        raise UserError(f"{case.properties_path}: is not valid JSON (cut short or damaged?); {redo}") from None
    expected = properties.get("shape_after_resampling")
    for path in (case.stored_image_path, case.stored_segmentation_path):
        try:
            shape = open_array(path).shape
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: cannot be read ({str(error).rstrip('.')}); {redo}") from None
        if expected is not None and list(shape[1:]) != list(expected):
            raise UserError(
                f"{path}: has shape {list(shape[1:])} but {case.properties_path.name} records {expected}; {redo}"
            )
    return properties
