"""Preprocess one case: read, crop to the non-zero region, transpose, normalise, resample, sample class locations."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.io.images import Geometry, Image, file_ending, read_image
from autoseg.records.plans import Configuration
from autoseg.transforms.class_locations import sample_class_locations
from autoseg.transforms.normalization import normalize_channels
from autoseg.transforms.resampling import (
    axis_orders_for,
    resample_channels,
    resample_segmentation,
    resampled_shape,
    separate_axis,
)
from autoseg.utils.nonzero_crop import bounding_box, nonzero_mask

INT8_RANGE = (-128, 127)


class CasePreprocessingError(UserError):
    """A case cannot be preprocessed because of its files (shapes disagree, labels are not integers, ...)."""


def identifier_from_image_path(path: str | os.PathLike[str]) -> str:
    """``.../CASE_0000.nii.gz`` -> ``CASE`` (and any other file name -> the name without its ending)."""
    name = Path(path).name
    ending = file_ending(path) or ""
    stem = name[: len(name) - len(ending)] if ending else name
    return stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem


def target_spacing_for(
    configuration: Configuration, spacing_after_crop: Sequence[float]
) -> tuple[float, float, float]:
    """The spacing a case is resampled to; 2D configurations keep each case's own slice spacing (axis 0)."""
    target = [float(v) for v in configuration.spacing]
    if configuration.dimension == 2:
        target[0] = float(spacing_after_crop[0])
    return (target[0], target[1], target[2])


def resampling_axis_orders(
    configuration: Configuration, *, order_key: str, from_spacing: Sequence[float], to_spacing: Sequence[float]
) -> tuple[int | None, int | None, int | None]:
    """Per-axis interpolation orders for images (``order_key="image_order"``) or labels (``"label_order"``) of a
    case resampled from ``from_spacing`` to ``to_spacing`` (both in the transposed axis order).

    Whether one axis is resampled on its own (with the plan's ``coarse_axis_order``), and which, is decided for this
    case by ``autoseg.transforms.resampling.separate_axis``, as the reference does; the plan's ``anisotropic``
    describes the median case only.
    """
    resampling = configuration.resampling
    default_order = 3 if order_key == "image_order" else 1
    return axis_orders_for(
        dimension=configuration.dimension,
        order=int(getattr(resampling, order_key, default_order)),
        separate=separate_axis(from_spacing, to_spacing),
        separate_axis_order=int(resampling.coarse_axis_order),
    )


def _read_label(path: str | os.PathLike[str], shape: tuple[int, ...]) -> np.ndarray:
    label = read_image(path)
    if tuple(label.geometry.shape) != shape:
        raise CasePreprocessingError(
            f"{path}: label shape {label.geometry.shape} differs from the image shape {shape} (z, y, x)."
        )
    array = label.array
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise CasePreprocessingError(f"{path}: label map holds non-integer values; labels must be integers.")
        array = rounded
    if array.size and (array.min() < INT8_RANGE[0] or array.max() > INT8_RANGE[1]):
        raise CasePreprocessingError(
            f"{path}: label values {array.min()}..{array.max()} do not fit the stored int8 range -128..127."
        )
    return array.astype(np.int8)


def _read_channels(
    image_paths: Sequence[str | os.PathLike[str]], label_path: str | os.PathLike[str] | None
) -> tuple[list[Image], np.ndarray | None]:
    """Every channel's image (all of one shape) and the int8 label map (or None)."""
    images = [read_image(path) for path in image_paths]
    geometry = images[0].geometry
    for path, image in zip(image_paths[1:], images[1:], strict=True):
        if tuple(image.geometry.shape) != tuple(geometry.shape):
            raise CasePreprocessingError(
                f"{path}: shape {image.geometry.shape} differs from the first channel's {geometry.shape} (z, y, x)."
            )
    segmentation = _read_label(label_path, tuple(geometry.shape)) if label_path is not None else None
    return images, segmentation


def _cropped_and_transposed(
    images: list[Image], segmentation: np.ndarray | None, transpose: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Geometry, list[tuple[int, int]]]:
    """The case cropped to the non-zero region, then transposed.

    Returns the channels ``(C, z, y, x)`` float32, the non-zero mask, the int8 label (or None), all cropped and
    transposed, and the first channel's geometry and the crop's bounding box (both in the original axes).
    """
    geometry = images[0].geometry
    mask = nonzero_mask([image.array for image in images])
    bbox = bounding_box(mask)
    crop = tuple(slice(start, stop) for start, stop in bbox)
    data = np.stack([np.asarray(image.array[crop], dtype=np.float32) for image in images])
    images.clear()  # the caller passes its only reference: the full-size arrays are freed here
    mask = mask[crop]
    if segmentation is not None:
        segmentation = segmentation[crop]

    data = np.ascontiguousarray(data.transpose([0, *(axis + 1 for axis in transpose)]))
    mask = np.ascontiguousarray(mask.transpose(transpose))
    if segmentation is not None:
        segmentation = np.ascontiguousarray(segmentation.transpose(transpose))
    return data, mask, segmentation, geometry, bbox


def _resample_images(
    data: np.ndarray,
    configuration: Configuration,
    shape_after_crop: tuple[int, ...],
    spacing_after_crop: tuple[float, ...],
) -> tuple[np.ndarray, tuple[int, ...], tuple[float, float, float]]:
    """The channels resampled to the configuration's spacing, their new shape, and that spacing."""
    target_spacing = target_spacing_for(configuration, spacing_after_crop)
    new_shape = resampled_shape(shape_after_crop, spacing_after_crop, target_spacing)
    if configuration.dimension == 2:
        new_shape = (shape_after_crop[0], *new_shape[1:])
    orders = resampling_axis_orders(
        configuration, order_key="image_order", from_spacing=spacing_after_crop, to_spacing=target_spacing
    )
    data = resample_channels(data, new_shape, axis_orders=orders)
    return data, new_shape, target_spacing


def _case_properties(
    identifier: str,
    geometry: Geometry,
    bbox: list[tuple[int, int]],
    *,
    shape_after_crop: tuple[int, ...],
    spacing_after_crop: tuple[float, ...],
    new_shape: tuple[int, ...],
    target_spacing: tuple[float, float, float],
) -> dict:
    """What ``CASE.json`` records, class locations aside, so that export can undo every step."""
    return {
        "identifier": identifier,
        "geometry": geometry.to_dict(),
        "shape_before_crop": [int(size) for size in geometry.shape],
        "crop_bbox": [[int(start), int(stop)] for start, stop in bbox],
        "shape_after_crop": list(shape_after_crop),
        "spacing_after_crop": list(spacing_after_crop),
        "shape_after_resampling": [int(size) for size in new_shape],
        "spacing_after_resampling": list(target_spacing),
    }


def _resample_label_and_sample_locations(
    segmentation: np.ndarray,
    properties: dict,
    configuration: Configuration,
    *,
    classes: Iterable[int] | None,
    identifier: str,
    ignore_label: int | None,
) -> tuple[np.ndarray, dict]:
    """The label resampled like the image (``properties``: its shapes and spacings) and the locations sampled per
    class for foreground oversampling."""
    orders = resampling_axis_orders(
        configuration, order_key="label_order", from_spacing=properties["spacing_after_crop"],
        to_spacing=properties["spacing_after_resampling"],
    )
    segmentation = resample_segmentation(segmentation, properties["shape_after_resampling"], axis_orders=orders)
    if classes is None:
        classes = [int(value) for value in np.unique(segmentation) if value > 0 and value != ignore_label]
    locations = sample_class_locations(segmentation, classes=classes, identifier=identifier, ignore_label=ignore_label)
    return segmentation, locations


def preprocess_case(
    image_paths: Sequence[str | os.PathLike[str]],
    label_path: str | os.PathLike[str] | None,
    *,
    configuration: Configuration,
    identifier: str | None = None,
    classes: Iterable[int] | None = None,
    ignore_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Turn one raw case into training/inference input for ``configuration``.

    Steps: read every channel as float32; crop to the bounding box of the non-zero region (channels OR'ed, holes
    filled; original axes); transpose with ``configuration.transpose_forward``; normalise each channel with its plan
    scheme (before resampling, so statistics come from the original voxels); resample images (cubic spline) and
    labels (linear on one-hot) to the target spacing, in-plane only for 2D configurations and nearest neighbour
    along the coarse axis of an anisotropic case (``separate_axis``, decided per case); sample up to 10k locations
    per class for foreground oversampling.

    Args:
        image_paths: one file per channel, in channel order.
        label_path: the label map, or None at inference.
        configuration: one resolved configuration of the plan.
        identifier: case name (default: from the first image's file name); seeds the location sample.
        classes: label values to sample locations for (default: every non-zero value present).
        ignore_label: the dataset's ignore label, if any: the annotated voxels' locations are sampled too.

    Returns:
        ``data`` float32 ``(C, z, y, x)``, ``seg`` int8 ``(1, z, y, x)`` or None, and the properties recorded in
        ``CASE.json`` (see docs/design.md), which ``autoseg.transforms.export`` needs to undo every step.

    Raises:
        CasePreprocessingError / ImageReadError: unreadable files, channels or label of different shapes, labels
            that are not integers.
    """
    if not image_paths:
        raise CasePreprocessingError("a case needs at least one image file.")
    images, segmentation = _read_channels(image_paths, label_path)
    return _preprocess_read_case(
        images, segmentation, configuration=configuration,
        identifier=identifier or identifier_from_image_path(image_paths[0]), classes=classes,
        ignore_label=ignore_label,
    )


def preprocess_images(
    images: Sequence[Image], *, configuration: Configuration, identifier: str
) -> tuple[np.ndarray, dict]:
    """``preprocess_case`` for channels already in memory (one ``Image`` per channel, all of one shape), unlabelled.

    Every step after reading is the same code, so an image and its file are preprocessed identically.
    """
    if not images:
        raise CasePreprocessingError("a case needs at least one image.")
    data, _, properties = _preprocess_read_case(
        list(images), None, configuration=configuration, identifier=identifier, classes=None, ignore_label=None
    )
    return data, properties


def _preprocess_read_case(
    images: list[Image],
    segmentation: np.ndarray | None,
    *,
    configuration: Configuration,
    identifier: str,
    classes: Iterable[int] | None,
    ignore_label: int | None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Every step of ``preprocess_case`` after reading; ``images`` is consumed (emptied) to free its arrays early."""
    transpose = list(configuration.transpose_forward)
    data, mask, segmentation, geometry, bbox = _cropped_and_transposed(images, segmentation, transpose)
    spacing_after_crop = tuple(float(geometry.spacing[axis]) for axis in transpose)
    shape_after_crop = tuple(int(size) for size in data.shape[1:])
    data = normalize_channels(data, schemes=configuration.normalization, nonzero_mask=mask)
    del mask
    data, new_shape, target_spacing = _resample_images(data, configuration, shape_after_crop, spacing_after_crop)
    properties = _case_properties(
        identifier, geometry, bbox, shape_after_crop=shape_after_crop, spacing_after_crop=spacing_after_crop,
        new_shape=new_shape, target_spacing=target_spacing,
    )
    if segmentation is None:
        properties["class_locations"] = {}
        return data, None, properties
    segmentation, properties["class_locations"] = _resample_label_and_sample_locations(
        segmentation, properties, configuration, classes=classes, identifier=identifier, ignore_label=ignore_label
    )
    return data, segmentation[None], properties
