"""Overlay images: one image slice, windowed to its 0.5-99.5 percentiles, each label class tinted and outlined.

Rendering choices, so that an overlay shows what the model saw and predicted:

* Grey values: the image's 0.5th..99.5th intensity percentiles (over the whole volume, so neighbouring slices of
  one case look alike) map linearly to 0..255; outliers such as calcifications or ultrasound text are clipped.
* 3D images show the slice with the most labelled voxels along ``axis`` unless a slice is given.
* Pixels are made square using the voxel spacing (nearest neighbour, so each voxel stays a visible block and labels
  stay exactly aligned), then enlarged by a whole factor until the shorter side reaches ``minimum_size`` pixels.
* Slices along axis 1 or 2 contain the ``z`` axis; they are flipped vertically so that ``z`` increases upwards.

Example:
    >>> from autoseg.io.images import read_image
    >>> image, label = read_image(image_path), read_image(label_path)
    >>> image.array.shape
    (35, 51, 35)
    >>> rgb = render_overlay(image.array, label.array, spacing=image.geometry.spacing)
    >>> rgb.shape, rgb.dtype  # one 51 x 35 slice, each voxel enlarged to 8 x 8 pixels
    ((408, 280, 3), dtype('uint8'))
    >>> save_png(rgb, "case_overlay.png").name
    'case_overlay.png'
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from autoseg.utils.files import atomic_path

# Distinct, colour-blind-friendly colours (Okabe-Ito), class value v uses PALETTE[(v - 1) % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)


def slice_with_most_foreground(label_array: np.ndarray, *, axis: int = 0) -> int:
    """Index along ``axis`` of the slice with the most non-zero labels (the middle slice when there are none)."""
    label_array = np.asarray(label_array)
    other_axes = tuple(a for a in range(label_array.ndim) if a != axis)
    counts = np.count_nonzero(label_array, axis=other_axes)
    if counts.max(initial=0) == 0:
        return label_array.shape[axis] // 2
    return int(np.argmax(counts))


def window_to_uint8(image: np.ndarray, *, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Map the ``[low, high]`` percentile window of the finite values linearly to 0..255."""
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [low_percentile, high_percentile])
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _display_indices(shape: tuple[int, int], pixel_spacing: tuple[float, float], minimum_size: int) -> list[np.ndarray]:
    """Source row/column index for every displayed pixel: square pixels, then a whole-number enlargement."""
    finest = min(pixel_spacing)
    square_shape = [max(1, round(n * s / finest)) for n, s in zip(shape, pixel_spacing, strict=True)]
    factor = max(1, math.ceil(minimum_size / min(square_shape)))
    indices = []
    for source_size, display_size in zip(shape, square_shape, strict=True):
        display_size *= factor
        positions = (np.arange(display_size) + 0.5) * source_size / display_size
        indices.append(np.minimum(positions.astype(np.int64), source_size - 1))
    return indices


def _class_outline(label_slice: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of a class touching a pixel of another value (4-neighbourhood), widened to ``thickness`` pixels."""
    edge = np.zeros(label_slice.shape, dtype=bool)
    edge[:-1, :] |= label_slice[:-1, :] != label_slice[1:, :]
    edge[1:, :] |= label_slice[1:, :] != label_slice[:-1, :]
    edge[:, :-1] |= label_slice[:, :-1] != label_slice[:, 1:]
    edge[:, 1:] |= label_slice[:, 1:] != label_slice[:, :-1]
    edge &= label_slice != 0
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1) & (label_slice != 0)
    return edge


def render_overlay(
    image_array: np.ndarray,
    label_array: np.ndarray,
    *,
    slice_index: int | None = None,
    axis: int = 0,
    spacing: Sequence[float] | None = None,
    opacity: float = 0.35,
    outline: bool = True,
    minimum_size: int = 256,
    palette: Sequence[tuple[int, int, int]] = PALETTE,
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB picture of one slice with the label classes tinted (``opacity``) and outlined.

    Args:
        image_array, label_array: ``(z, y, x)`` (or ``(H, W)``) arrays of equal shape.
        slice_index: slice along ``axis``; default: the slice with the most labelled voxels.
        spacing: voxel size per array axis; makes displayed pixels square. Default: isotropic.

    Raises:
        ValueError: the shapes differ, or ``axis``/``slice_index`` is out of range.
    """
    image_array = np.asarray(image_array)
    label_array = np.asarray(label_array)
    if image_array.shape != label_array.shape:
        raise ValueError(f"image shape {image_array.shape} differs from label shape {label_array.shape}")
    if image_array.ndim == 2:
        image_array, label_array = image_array[None], label_array[None]
        spacing = None if spacing is None else (1.0, *spacing)
        axis = 0
    if image_array.ndim != 3 or not 0 <= axis < 3:
        raise ValueError(f"expected a 2D or 3D array and axis 0, 1 or 2; got shape {image_array.shape}, axis {axis}")
    if slice_index is None:
        slice_index = slice_with_most_foreground(label_array, axis=axis)
    if not 0 <= slice_index < image_array.shape[axis]:
        raise ValueError(f"slice {slice_index} is outside 0..{image_array.shape[axis] - 1} along axis {axis}")
    grey = np.take(window_to_uint8(image_array), slice_index, axis=axis)
    labels = np.take(label_array, slice_index, axis=axis)
    labels = np.rint(labels).astype(np.int64) if labels.dtype.kind == "f" else labels.astype(np.int64)
    pixel_spacing = (1.0, 1.0) if spacing is None else tuple(
        abs(float(s)) for a, s in enumerate(spacing) if a != axis
    )
    if axis != 0:
        grey, labels = grey[::-1], labels[::-1]
    rows, columns = _display_indices(grey.shape, pixel_spacing, minimum_size)
    grey = grey[np.ix_(rows, columns)]
    labels = labels[np.ix_(rows, columns)]
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    thickness = max(1, round(min(labels.shape) / 300))
    outlines = _class_outline(labels, thickness) if outline else np.zeros(labels.shape, dtype=bool)
    for value in np.unique(labels):
        if value == 0:
            continue
        colour = np.asarray(palette[(int(value) - 1) % len(palette)], dtype=np.float32)
        region = labels == value
        rgb[region] = (1.0 - opacity) * rgb[region] + opacity * colour
        rgb[region & outlines] = colour
    return np.round(rgb).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """The PNG file content of an ``(H, W, 3)`` uint8 array, for embedding (e.g. base64 in the HTML report).

    Encoded in memory by Pillow (installed with matplotlib, which draws the report's plots) as 8-bit RGB: lossless,
    and without the opaque alpha channel that ``matplotlib.image.imsave`` would add to every pixel.
    """
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")  # (H, W, 3) uint8 is RGB
    return buffer.getvalue()


def save_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as an RGB PNG, atomically."""
    data = png_bytes(rgb)
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path
