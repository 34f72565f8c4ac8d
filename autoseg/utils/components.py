"""Keep only the largest connected component of a mask, or of some label values inside a label map.

Components use full connectivity (26 neighbours in 3D, 8 within a 2D slice): voxels touching by a corner belong to
the same structure, so a thin, diagonally running part of an organ is not cut off as a "small component".
The labelling runs in ``cc3d`` (connected-components-3d, a dependency of acvl-utils) when available, else in
``scipy.ndimage.label``; both give the same components.

Example:
    >>> mask = np.zeros((1, 6, 6), bool); mask[0, :2, :2] = True; mask[0, 4:, 3:] = True
    >>> int(keep_largest_component(mask).sum())
    6
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

try:
    import cc3d
except ImportError:  # pragma: no cover - cc3d ships with acvl-utils; scipy is the documented fallback
    cc3d = None


def _largest_component_scipy(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean 2D or 3D mask (an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    if cc3d is None or mask.ndim not in (2, 3):
        return _largest_component_scipy(mask)
    connectivity = 26 if mask.ndim == 3 else 8
    largest = cc3d.largest_k(np.ascontiguousarray(mask), k=1, connectivity=connectivity, binary_image=True)
    return largest.astype(bool, copy=False)


def keep_largest_of_values(
    label_map: np.ndarray, values: Iterable[int], *, replacement: int = 0
) -> np.ndarray:
    """A copy of ``label_map`` in which voxels of ``values`` outside the largest component they form together are set
    to ``replacement`` (background).

    With ``values`` = every foreground value this keeps the largest object of the whole foreground (its classes
    intact); with one value it keeps that class's largest object.
    """
    label_map = np.asarray(label_map)
    mask = np.isin(label_map, list(values))
    removed = mask & ~keep_largest_component(mask)
    result = label_map.copy()
    result[removed] = replacement
    return result
