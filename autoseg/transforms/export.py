"""Undo preprocessing for a prediction: resample back, transpose back, uncrop, and write with the input's geometry.

The inverse of ``autoseg.transforms.case.preprocess_case``: class probabilities in the preprocessed grid are
resampled (linearly, so they stay convex combinations: non-negative, summing to 1; nearest along the coarse axis of
anisotropic cases; in-plane only for 2D ones) to the exact cropped shape, transposed back to the file's axis
order, and placed into the original grid, where everything outside the crop box is background.

Example:
    >>> from autoseg.io.images import read_image
    >>> from autoseg.transforms.case import preprocess_case
    >>> data, _, properties = preprocess_case([image_path], None, configuration=configuration)
    >>> logits = np.zeros((3, *data.shape[1:]), np.float32); logits[2] = 5.0  # (K, z, y, x): class 2 everywhere
    >>> label_map = export_prediction(logits, properties, configuration=configuration,
    ...                               output_path="case.nii.gz")
    >>> np.unique(label_map).tolist()
    [2]
    >>> read_image("case.nii.gz").geometry == read_image(image_path).geometry
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.io.images import Geometry, file_ending, write_image
from autoseg.records.plans import Configuration
from autoseg.transforms.case import resampling_axis_orders
from autoseg.transforms.resampling import resample_channels
from autoseg.utils.files import atomic_path

# Probabilities are resampled linearly (order 1): a cubic spline would overshoot below 0 and above 1.
PROBABILITY_ORDER = 1
PROBABILITY_TOLERANCE = 1e-3


def _as_float_array(values: object) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (duck-typed, so torch is not imported here)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def _probability_axis_orders(configuration: Configuration, properties: dict) -> tuple[int | None, ...]:
    """The way back: from the preprocessed spacing to the case's own, the separate axis decided as on the way in
    (for this case, checking the spacing it leaves first, as the reference's export does)."""
    orders = resampling_axis_orders(
        configuration, order_key="image_order", from_spacing=properties["spacing_after_resampling"],
        to_spacing=properties["spacing_after_crop"],
    )
    return tuple(None if order is None else min(order, PROBABILITY_ORDER) for order in orders)


def _crop_slices(properties: dict) -> tuple[slice, ...]:
    return tuple(slice(int(start), int(stop)) for start, stop in properties["crop_bbox"])


def _back_to_cropped_file_axes(
    channels: np.ndarray, properties: dict, *, configuration: Configuration, rows: slice | None = None
) -> np.ndarray:
    """``(K, preprocessed grid)`` -> ``(K, crop box in the file's axis order)``; with ``rows`` only those rows of
    the first preprocessed axis (a slab)."""
    resampled = resample_channels(
        channels, properties["shape_after_crop"], axis_orders=_probability_axis_orders(configuration, properties),
        rows=None if rows is None else (0, rows),
    )
    backward = list(configuration.transpose_backward)
    return np.ascontiguousarray(resampled.transpose([0, *(axis + 1 for axis in backward)]))


# Output voxels of one slab of the label map: its K resampled channels stay small whatever the image's size.
LABEL_MAP_SLAB_VOXELS = 8_000_000


def _slabs(properties: dict) -> list[slice]:
    """Slabs of the first preprocessed axis in the crop box's (resampled) shape, about ``LABEL_MAP_SLAB_VOXELS``."""
    shape = [int(size) for size in properties["shape_after_crop"]]
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, LABEL_MAP_SLAB_VOXELS // per_row)
    return [slice(start, min(start + step, shape[0])) for start in range(0, max(shape[0], 1), step)]


def probabilities_to_original_geometry(
    probabilities: np.ndarray, properties: dict, *, configuration: Configuration
) -> np.ndarray:
    """Class probabilities ``(K, z, y, x)`` in the preprocessed grid -> ``(K, *original shape)`` float32.

    Outside the crop box channel 0 (background) is 1 and the others 0.
    TODO(regions): region-based (sigmoid) outputs need 0 in every channel outside the box.
    """
    probabilities = _as_float_array(probabilities)
    cropped = _back_to_cropped_file_axes(probabilities, properties, configuration=configuration)
    full = np.zeros((probabilities.shape[0], *properties["shape_before_crop"]), dtype=np.float32)
    full[0] = 1
    full[(slice(None), *_crop_slices(properties))] = cropped
    return full


def probabilities_to_label_map(
    probabilities: np.ndarray,
    properties: dict,
    *,
    configuration: Configuration,
    label_values: Sequence[int] | None = None,
) -> np.ndarray:
    """Argmax label map in the original grid, computed one class at a time (memory: a few volumes, not K).

    Equals ``argmax(probabilities_to_original_geometry(...))`` (ties go to the lower channel), mapped through
    ``label_values`` (channel index -> label value; default: the index itself).
    """
    probabilities = _as_float_array(probabilities)
    values = np.asarray(label_values if label_values is not None else range(probabilities.shape[0]), dtype=np.int16)
    label_map = np.full(properties["shape_before_crop"], values[0], dtype=np.int16)
    crop = _crop_slices(properties)
    # Preprocessed axis 0 is file axis transpose_forward[0]: each slab fills those rows of the crop box.
    file_axis = int(list(configuration.transpose_backward).index(0))
    for rows in _slabs(properties):
        index = list(crop)
        index[file_axis] = slice(crop[file_axis].start + rows.start, crop[file_axis].start + rows.stop)
        label_map[tuple(index)] = values[_slab_argmax(probabilities, properties, configuration, rows)]
    return label_map


def _slab_argmax(
    probabilities: np.ndarray, properties: dict, configuration: Configuration, rows: slice
) -> np.ndarray:
    """Channel index of the largest resampled probability in one slab (ties go to the lower channel)."""
    best_probability: np.ndarray | None = None
    best_channel: np.ndarray | None = None
    for channel in range(probabilities.shape[0]):
        resampled = _back_to_cropped_file_axes(
            probabilities[channel : channel + 1], properties, configuration=configuration, rows=rows
        )[0]
        if best_probability is None:
            best_probability, best_channel = resampled, np.zeros(resampled.shape, dtype=np.int16)
            continue
        better = resampled > best_probability
        best_probability[better] = resampled[better]
        best_channel[better] = channel
    return best_channel


def write_segmentation(label_map: np.ndarray, properties: dict, path: str | os.PathLike[str]) -> None:
    """Write a label map in the original grid with exactly the input's spacing, origin, direction and shape."""
    geometry = Geometry.from_dict(properties["geometry"])
    label_map = np.asarray(label_map)
    if tuple(label_map.shape) != tuple(geometry.shape):
        raise ValueError(f"label map shape {label_map.shape} differs from the input's {geometry.shape}")
    fits_uint8 = label_map.size == 0 or (label_map.min() >= 0 and label_map.max() <= 255)
    write_image(label_map.astype(np.uint8 if fits_uint8 else np.int16), geometry, path)


def is_probability_array(values: np.ndarray) -> bool:
    """Non-negative, at most 1, and summing to 1 over channels (within PROBABILITY_TOLERANCE)."""
    if values.size == 0 or values.min() < 0 or values.max() > 1 + PROBABILITY_TOLERANCE:
        return False
    return bool(np.all(np.abs(values.sum(axis=0) - 1) <= PROBABILITY_TOLERANCE))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, shifted by the maximum so large logits do not overflow."""
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (shifted / shifted.sum(axis=0, keepdims=True)).astype(np.float32)


def probabilities_path_for(output_path: str | os.PathLike[str]) -> Path:
    """``case.nii.gz`` -> ``case.npz`` (where ``save_probabilities`` stores them)."""
    output_path = Path(output_path)
    ending = file_ending(output_path) or output_path.suffix
    return output_path.with_name(output_path.name[: len(output_path.name) - len(ending)] + ".npz")


def export_prediction(
    logits_or_probabilities: np.ndarray,
    properties: dict,
    *,
    configuration: Configuration,
    output_path: str | os.PathLike[str],
    save_probabilities: bool = False,
    label_values: Sequence[int] | None = None,
) -> np.ndarray:
    """Write the label map of a network output ``(K, z, y, x)`` (logits, or probabilities) to ``output_path``.

    Logits are recognised (not probabilities: negative, above 1 or not summing to 1) and turned into
    probabilities by a softmax. With ``save_probabilities`` the probabilities in the original grid are also
    stored as ``probabilities`` (float32, ``(K, z, y, x)``) in an ``.npz`` next to the label map (no pickle).

    Returns:
        The label map written (original grid).
    """
    values = _as_float_array(logits_or_probabilities)
    probabilities = values if is_probability_array(values) else softmax(values)
    if save_probabilities:
        full = probabilities_to_original_geometry(probabilities, properties, configuration=configuration)
        indices = np.argmax(full, axis=0)
        lookup = np.asarray(label_values if label_values is not None else range(full.shape[0]), dtype=np.int16)
        label_map = lookup[indices]
        with atomic_path(probabilities_path_for(output_path)) as temporary:
            np.savez_compressed(temporary, probabilities=full)
    else:
        label_map = probabilities_to_label_map(
            probabilities, properties, configuration=configuration, label_values=label_values
        )
    write_segmentation(label_map, properties, output_path)
    return label_map
