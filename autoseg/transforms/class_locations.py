"""A bounded, reproducible sample of voxel positions per class, so training can oversample foreground quickly."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

MAXIMUM_LOCATIONS_PER_CLASS = 10_000
# Key of the annotated voxels' positions (datasets with an ignore label).
ANNOTATED = "annotated"


def case_seed(identifier: str) -> int:
    """A seed that depends only on the case name: samples do not depend on worker count or case order."""
    return zlib.crc32(identifier.encode("utf-8"))


def sample_class_locations(
    segmentation: np.ndarray,
    *,
    classes: Iterable[int],
    identifier: str,
    maximum_per_class: int = MAXIMUM_LOCATIONS_PER_CLASS,
    ignore_label: int | None = None,
) -> dict[str, list[list[int]]]:
    """Up to ``maximum_per_class`` ``[z, y, x]`` positions of each class in a ``(z, y, x)`` label map.

    Positions are drawn uniformly without replacement (so a patch centred on one is a uniform draw over the
    class) with a seed from the case name, and kept in raster order. Classes absent from the case get ``[]``.
    With an ``ignore_label`` (sparse annotation) the key ``ANNOTATED`` also holds positions of the annotated
    voxels (every label but the ignore label, background included), where training centres its random patches.
    """
    generator = np.random.default_rng(case_seed(identifier))
    flat = segmentation.reshape(-1)
    locations: dict[str, list[list[int]]] = {}
    selections = [(str(int(value)), flat == value) for value in classes]
    if ignore_label is not None:
        selections.append((ANNOTATED, flat != ignore_label))
    for key, selected in selections:
        indices = np.flatnonzero(selected)
        if indices.size > maximum_per_class:
            indices = np.sort(generator.choice(indices, size=maximum_per_class, replace=False))
        coordinates = np.stack(np.unravel_index(indices, segmentation.shape), axis=1)
        locations[key] = coordinates.astype(int).tolist()
    return locations
