"""Resample a label map inside the window around its foreground only, with exactly the full resampling's result.

``resample_segmentation`` (``autoseg.transforms.resampling``) already resamples each class inside its own bounding
box, but it still scans, allocates and compares whole volumes: on a 512 x 512 x 200 CT label map whose organs fill
a fifth of it, most of the time goes to background. Here a label map is a ``LabelWindow``: the box around every
non-background voxel, where it is in the full array and the full array's shape (background outside the box). The
full-size interpolation matrices are cut to the window's columns and to the rows those columns reach, so every
output voxel sums the same weights in the same order as the full resampling does: the result is the same array,
background outside the new window. Where that cannot be guaranteed (the label map has no background voxel at all,
or a vanishing class would be kept in a voxel outside the window) ``OutsideWindow`` is raised and the caller
resamples in full.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from autoseg.transforms.resampling import AxisOperator, axis_operators, class_vote, class_weight


class OutsideWindow(Exception):
    """The windowed result could differ from the full one; resample the full array instead."""


@dataclasses.dataclass(frozen=True)
class LabelWindow:
    """``array`` is the part of a label map of ``shape`` that starts at ``start``; background (0) elsewhere."""

    array: np.ndarray
    start: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(start + size for start, size in zip(self.start, self.array.shape, strict=True))

    @property
    def has_background(self) -> bool:
        """Whether the full array holds a 0 (the full resampling's background is 0 only then)."""
        return tuple(self.array.shape) != tuple(self.shape) or bool(np.any(self.array == 0))


def foreground_window(label: np.ndarray) -> LabelWindow | None:
    """``label`` as the window around its non-zero voxels; None when it has none."""
    box = []
    for axis in range(label.ndim):
        present = np.flatnonzero(np.any(label != 0, axis=tuple(a for a in range(label.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return LabelWindow(label[tuple(box)], tuple(s.start for s in box), tuple(int(v) for v in label.shape))


def _window_operators(
    window: LabelWindow, new_shape: Sequence[int], axis_orders: Sequence[int | None]
) -> tuple[list[AxisOperator], list[int], list[int]]:
    """The full operators cut to the window's columns and the rows they reach; the new window's start and stop."""
    start, stop = list(window.start), list(window.stop)
    operators = []
    for operator in axis_operators(window.shape, new_shape, axis_orders):
        axis = operator.axis
        block = operator.matrix_columns[:, start[axis]:stop[axis]].tocsr()
        touched = np.flatnonzero(np.diff(block.indptr))
        if touched.size == 0:
            raise OutsideWindow
        first, last = int(touched[0]), int(touched[-1]) + 1
        rows = block[first:last]
        operators.append(AxisOperator(axis, rows, rows.tocsc(), operator.cubic))
        start[axis], stop[axis] = first, last
    return operators, start, stop


def resample_window(
    window: LabelWindow, new_shape: Sequence[int], *, axis_orders: Sequence[int | None]
) -> LabelWindow:
    """``resample_segmentation`` of the full label map, as a window (orders 0 and 1, background 0 only)."""
    if not window.has_background:
        raise OutsideWindow
    new_shape = tuple(int(v) for v in new_shape)
    operators, start, stop = _window_operators(window, new_shape, axis_orders)
    if not operators:
        return LabelWindow(window.array.copy(), window.start, new_shape)
    local_shape = tuple(b - a for a, b in zip(start, stop, strict=True))
    segmentation = window.array
    values = [int(value) for value in np.unique(segmentation) if value != 0]
    result = class_vote(segmentation, values, operators, local_shape, 0)
    for value in values:
        if not np.any(result == value):
            result[_kept_voxel(window, value, operators, new_shape, start, local_shape)] = value
    return LabelWindow(result, tuple(start), new_shape)


def _kept_voxel(
    window: LabelWindow, value: int, operators: list[AxisOperator], new_shape: tuple[int, ...], start: list[int],
    local_shape: tuple[int, ...],
) -> tuple[int, ...]:
    """Where ``resample_segmentation`` keeps a class that lost every voxel, in window coordinates."""
    weight, output_box = class_weight(window.array, value, operators, local_shape)
    if weight.size and weight.max() > 0:
        index = np.unravel_index(int(np.argmax(weight)), weight.shape)
        return tuple(int(offset.start) + int(i) for offset, i in zip(output_box, index, strict=True))
    # No new sample saw it at all: the new voxel that contains its first voxel (C order, so the window's first).
    first = np.unravel_index(int(np.flatnonzero(window.array == value)[0]), window.array.shape)
    position = [
        min(int((index + offset + 0.5) * new / old), new - 1) - new_start
        for index, offset, old, new, new_start in zip(first, window.start, window.shape, new_shape, start, strict=True)
    ]
    if any(p < 0 or p >= size for p, size in zip(position, local_shape, strict=True)):
        raise OutsideWindow
    return tuple(position)
