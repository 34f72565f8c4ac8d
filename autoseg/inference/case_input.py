"""One case's network input: preprocessed for a configuration (and its cascade's previous stage), checked finite.

Runs in the prediction pipeline's worker processes, so it holds plain arrays and records only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from autoseg.errors import UserError
from autoseg.io.images import require_finite_voxels
from autoseg.records.plans import Configuration
from autoseg.transforms.case import preprocess_case


@dataclasses.dataclass
class PreprocessedCase:
    """Network input of one case (``(C, z, y, x)`` float32), its properties, and the previous stage's input."""

    data: np.ndarray
    properties: dict
    previous_stage_data: np.ndarray | None = None


def preprocess_for_prediction(
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    configuration: Configuration,
    previous_configuration: Configuration | None = None,
) -> PreprocessedCase:
    """Preprocess one case for ``configuration`` (and for the previous cascade stage). Runs in worker processes."""
    paths = [str(path) for path in image_paths]
    data, _, properties = preprocess_case(paths, None, configuration=configuration)
    # A voxel without a value has no right answer: refuse rather than segment whatever it was silently turned into.
    for path in paths:
        require_finite_voxels(path)  # NIfTI: ITK reads NaN/Inf as 0, so the stored bytes are checked
    if not np.isfinite(data).all():  # other formats keep NaN/Inf, which the normalisation spreads over the image
        raise UserError(f"{', '.join(paths)}: holds NaN or Inf voxels; replace them with a real value (e.g. the "
                        "background's) first.")
    previous_data = None
    if previous_configuration is not None:
        previous_data, _, _ = preprocess_case(paths, None, configuration=previous_configuration)
    return PreprocessedCase(np.ascontiguousarray(data, dtype=np.float32), properties, previous_data)
