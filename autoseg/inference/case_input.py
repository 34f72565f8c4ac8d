"""One case's network input: preprocessed for a configuration (and its cascade's previous stage), checked finite.

A case comes from its files (in the prediction pipeline's worker processes, so this holds plain arrays and records
only) or from an array in memory; both go through the same preprocessing code (``autoseg.transforms.case``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from autoseg.errors import UserError
from autoseg.io.images import Geometry, Image, require_finite_voxels
from autoseg.records.plans import Configuration
from autoseg.transforms.case import preprocess_case, preprocess_images


@dataclasses.dataclass
class NetworkInput:
    """Network input of one case (``(C, z, y, x)`` float32), its properties, and the previous stage's input."""

    data: np.ndarray
    properties: dict
    previous_stage_data: np.ndarray | None = None


def preprocess_for_prediction(
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    configuration: Configuration,
    previous_configuration: Configuration | None = None,
) -> NetworkInput:
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
    return NetworkInput(np.ascontiguousarray(data, dtype=np.float32), properties, previous_data)


# The identity direction and zero origin an array is given; the label map comes back in the array's grid, so they
# only name the axes.
_ARRAY_ORIGIN = (0.0, 0.0, 0.0)
_ARRAY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def channels_first(array: np.ndarray, spacing: Sequence[float], *, num_channels: int) -> np.ndarray:
    """``array`` as ``(C, z, y, x)`` (a ``(z, y, x)`` array is one channel); a ``UserError`` for a shape, spacing or
    channel count the model cannot take."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise UserError(f"predict_array needs a (C, z, y, x) or (z, y, x) array, got shape {array.shape}.")
    if len(spacing) != 3:
        raise UserError(f"spacing needs one value per array axis (z, y, x), got {tuple(spacing)}.")
    if len(array) != num_channels:
        raise UserError(f"the array has {len(array)} channel(s); the model expects {num_channels}.")
    return array


def preprocess_array_for_prediction(
    array: np.ndarray,
    spacing: Sequence[float],
    *,
    configuration: Configuration,
    previous_configuration: Configuration | None = None,
) -> NetworkInput:
    """``preprocess_for_prediction`` for channels ``(C, z, y, x)`` in memory with voxel ``spacing`` (z, y, x).

    The spacing is taken at float32 precision, as an image file's header stores it, so an array is resampled to
    exactly the grid its file would be.
    """
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise UserError("the array holds NaN or Inf voxels; replace them with a real value (e.g. the background's) "
                        "first.")
    geometry = Geometry(
        spacing=tuple(float(np.float32(value)) for value in spacing), origin=_ARRAY_ORIGIN,
        direction=_ARRAY_DIRECTION, shape=tuple(int(size) for size in array.shape[1:]),
    )
    data, properties = preprocess_images(
        [Image(channel, geometry) for channel in array], configuration=configuration, identifier="array"
    )
    previous_data = None
    if previous_configuration is not None:
        previous_data, _ = preprocess_images(
            [Image(channel, geometry) for channel in array], configuration=previous_configuration, identifier="array"
        )
    return NetworkInput(np.ascontiguousarray(data, dtype=np.float32), properties, previous_data)
