"""Write a case's prediction back in the input's grid: one model or an ensemble of configurations, post-processed.

The inverse of preprocessing itself (resample back, transpose back, uncrop) lives in
``autoseg.transforms.export``; this module decides what to write: a single configuration's label map is computed
one class at a time (memory: a few volumes); an ensemble averages the members' probabilities in the input's grid,
where configurations with different spacings meet. Post-processing (``postprocessing.json``) is applied last.
An output path ending in ``.seg.nrrd`` is written as a 3D Slicer segmentation named with the dataset's labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from autoseg.inference.label_maps import label_map_from_probabilities
from autoseg.inference.quality import LabelMapStatistics, label_map_statistics
from autoseg.io.images import Geometry
from autoseg.io.slicer_segmentation import is_slicer_segmentation_path, write_slicer_segmentation
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.transforms.export import (
    probabilities_path_for,
    probabilities_to_label_map,
    probabilities_to_original_geometry,
    write_segmentation,
)
from autoseg.utils.files import atomic_path


def probabilities_in_input_grid(
    probabilities: np.ndarray, properties: dict, *, configuration: Configuration, dataset: RawDataset
) -> np.ndarray:
    """Probabilities ``(K, z, y, x)`` resampled, transposed and uncropped back to the input's grid.

    Outside the crop box a class model says background (probability 1 in channel 0); a region model says no
    region (0 in every channel).
    """
    full = probabilities_to_original_geometry(probabilities, properties, configuration=configuration)
    if dataset.has_regions:
        inside = np.zeros(full.shape[1:], dtype=bool)
        inside[tuple(slice(int(start), int(stop)) for start, stop in properties["crop_bbox"])] = True
        full[0][~inside] = 0
    return full


MemberOutput = tuple[np.ndarray, dict, Configuration]


def members_label_map(
    members: Sequence[MemberOutput],
    *,
    dataset: RawDataset,
    postprocessing: PostprocessingDecision | None = None,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One case's post-processed label map in the input's grid, and (when asked) the averaged probabilities there.

    Args:
        members: one ``(probabilities (K, z, y, x) in the member's preprocessed grid, properties, configuration)``
            per ensemble member (a single model is one member).
        postprocessing: the ``postprocessing.json`` decision, applied to the label map.
        with_probabilities: also return the (averaged) probabilities in the input's grid, float32 ``(K, z, y, x)``.
    """
    label_map, full = _raw_label_map(members, dataset=dataset, with_probabilities=with_probabilities)
    if postprocessing is not None:
        label_map = postprocessing.apply(label_map)
    return label_map, full


def _raw_label_map(
    members: Sequence[MemberOutput], *, dataset: RawDataset, with_probabilities: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``members_label_map`` before post-processing."""
    full = None
    if len(members) == 1 and not dataset.has_regions and not with_probabilities:
        probabilities, properties, configuration = members[0]
        return probabilities_to_label_map(probabilities, properties, configuration=configuration), None
    for probabilities, member_properties, configuration in members:
        member_full = probabilities_in_input_grid(
            probabilities, member_properties, configuration=configuration, dataset=dataset
        )
        full = member_full if full is None else np.add(full, member_full, out=full)
    if len(members) > 1:
        full /= len(members)
    return label_map_from_probabilities(full, dataset=dataset), full


def export_members(
    members: Sequence[MemberOutput],
    *,
    dataset: RawDataset,
    output_path: str | os.PathLike[str],
    save_probabilities: bool = False,
    postprocessing: PostprocessingDecision | None = None,
    statistics_targets: Sequence[int] | None = None,
) -> LabelMapStatistics | None:
    """Write one case's label map with exactly the input's geometry (runs in export worker processes).

    ``members`` and ``postprocessing`` are as for ``members_label_map``; ``save_probabilities`` also writes the
    (averaged) probabilities in the input's grid to ``CASE.npz`` (key ``probabilities``, float32 ``(K, z, y, x)``)
    next to the label map. With ``statistics_targets`` (label values), returns the label map's volumes and
    largest-piece shares for the quality estimate, measured before post-processing: the cross-validation
    predictions its calibration was fitted on are not post-processed either, and a kept-largest-component map
    would hide the stray pieces the estimate looks for.
    """
    label_map, probabilities = _raw_label_map(members, dataset=dataset, with_probabilities=save_probabilities)
    statistics = None
    if statistics_targets is not None:
        spacing = Geometry.from_dict(members[0][1]["geometry"]).spacing
        statistics = label_map_statistics(label_map, spacing=spacing, targets=statistics_targets)
    if postprocessing is not None:
        label_map = postprocessing.apply(label_map)
    if save_probabilities:
        with atomic_path(probabilities_path_for(output_path)) as temporary:
            np.savez_compressed(temporary, probabilities=probabilities)
    del probabilities
    properties = members[0][1]
    if is_slicer_segmentation_path(output_path):
        write_slicer_segmentation(label_map, Geometry.from_dict(properties["geometry"]), output_path,
                                  segments=named_label_values(dataset))
    else:
        write_segmentation(label_map, properties, output_path)
    return statistics


def named_label_values(dataset: RawDataset) -> list[tuple[str, int]]:
    """``(label name, value in the written label map)`` for every foreground class, ordered by value.

    Classes are written as their own value; a region model paints its ``regions_class_order`` value for each region
    (in the order the regions are declared), so that value carries the region's name.
    """
    named = [(name, value) for name, value in dataset.labels.items() if name not in ("background", "ignore")]
    if dataset.has_regions:
        order = dataset.regions_class_order or tuple(range(1, len(named) + 1))
        named = [(name, value) for (name, _), value in zip(named, order, strict=True)]
    return sorted(((name, int(value)) for name, value in named), key=lambda item: item[1])

