"""Target spacing of the 3D configurations (median per axis, with the anisotropy rule) and the axis order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# An axis is "anisotropic" when its spacing is more than this many times the spacing of every other axis.
ANISOTROPY_RATIO = 3.0


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], *, is_2d: bool
) -> list[float]:
    """Per-axis median spacing, except for a coarse axis that would be too thin after resampling.

    When one axis' median spacing is more than 3x coarser than every other axis *and* its median size is more than
    3x smaller than the other axes' (typical for thick-slice MRI/CT), resampling it to the median would leave very
    few slices with heavy interpolation; the 10th percentile of that axis' spacings keeps more of the slices that
    the finer-sliced cases have. It is never made finer than the coarsest other axis, so it stays the coarse axis.
    For 2D data (every case one slice thick) the first axis is not planned and the rule does not apply.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    shapes = np.asarray(shapes, dtype=np.float64)
    median_spacing = np.median(spacings, axis=0)
    target = [float(v) for v in median_spacing]
    if is_2d:
        return target
    median_shape = np.median(shapes, axis=0)
    coarse_axis = int(np.argmax(median_spacing))
    other_axes = [axis for axis in range(len(target)) if axis != coarse_axis]
    coarse_spacing = median_spacing[coarse_axis] > ANISOTROPY_RATIO * max(median_spacing[other_axes])
    thin_volume = median_shape[coarse_axis] * ANISOTROPY_RATIO < min(median_shape[other_axes])
    if coarse_spacing and thin_volume:
        low_percentile = float(np.percentile(spacings[:, coarse_axis], 10))
        target[coarse_axis] = max(low_percentile, float(max(median_spacing[other_axes])))
    return target


def transpose_for_spacing(spacing: Sequence[float], *, is_2d: bool) -> tuple[list[int], list[int]]:
    """``(transpose_forward, transpose_backward)``: the coarsest axis first, the others in their original order.

    Putting the coarse axis first means the ``2d`` configuration slices across it (in-plane images at full
    resolution), and network code can assume axis 0 is the odd one out. 2D data keeps its order: axis 0 is the
    single slice.
    """
    dimension = len(spacing)
    if is_2d:
        forward = list(range(dimension))
    else:
        coarse_axis = int(np.argmax(np.asarray(spacing)))
        forward = [coarse_axis] + [axis for axis in range(dimension) if axis != coarse_axis]
    backward = [forward.index(axis) for axis in range(dimension)]
    return forward, backward
