"""Metrics of one binary mask pair: overlap (Dice, IoU, precision, recall) and spacing-aware surface distances.

Definitions (``P`` = predicted mask, ``R`` = reference mask, counts over evaluated voxels):

* Dice ``2|P∩R| / (|P| + |R|)``, IoU ``|P∩R| / |P∪R|``, precision ``|P∩R| / |P|``, recall ``|P∩R| / |R|``.
* Surfaces ``∂P``, ``∂R`` are the mask voxels with at least one face neighbour outside the mask (the image border
  counts as outside). ``d(p, ∂R)`` is the Euclidean distance in mm, using the voxel spacing, from the centre of
  surface voxel ``p`` to the nearest surface voxel centre of ``R``; it comes from one exact Euclidean distance
  transform (``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``) of each surface.
* HD95 ``max(P95{d(p, ∂R) : p ∈ ∂P}, P95{d(r, ∂P) : r ∈ ∂R})`` (the larger of the two directed 95th percentiles).
* ASSD ``(Σ_p d(p, ∂R) + Σ_r d(r, ∂P)) / (|∂P| + |∂R|)``.
* Normalised surface Dice at tolerance ``τ`` (Nikolov et al. 2021), with surface voxels standing in for surface
  area: ``(|{p : d(p, ∂R) ≤ τ}| + |{r : d(r, ∂P) ≤ τ}|) / (|∂P| + |∂R|)``.

Empty masks (documented in docs/evaluation.md):

* both empty: every metric is ``None`` (null in JSON) and is left out of means; there is nothing to measure, and
  scoring it as 1.0 would inflate the mean of classes that are often absent.
* reference empty, prediction not (a false detection) or the reverse (a miss): Dice, IoU and NSD are 0; precision
  is 0 or recall is 0 where defined, the other one is ``None``; HD95 and ASSD are set to the penalty distance, the
  diagonal of the image's physical extent in mm (no two voxels of the image can be farther apart), so failures
  count in the mean instead of vanishing from it.

2D images stored as ``(1, H, W)`` arrays are evaluated in 2D: the single slice along axis 0 is not a surface.

Example:
    >>> reference = np.zeros((1, 8, 8), bool); reference[0, 2:6, 2:6] = True
    >>> compute_binary_metrics(reference, reference, spacing=(1.0, 0.5, 0.5))["dice"]
    1.0
    >>> shifted = np.roll(reference, 1, axis=2)  # one 0.5 mm pixel to the right
    >>> metrics = compute_binary_metrics(shifted, reference, spacing=(1.0, 0.5, 0.5))
    >>> metrics["dice"], metrics["hd95_mm"], metrics["nsd"]  # every surface pixel within NSD's 1 mm tolerance
    (0.75, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm", "nsd")
SURFACE_METRIC_NAMES = ("hd95_mm", "assd_mm", "nsd")
COUNT_NAMES = ("true_positives", "false_positives", "false_negatives", "reference_voxels", "prediction_voxels")
DEFAULT_TOLERANCE_MM = 1.0
_DISTANCE_ROUNDING_MM = 1e-6


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else float(numerator) / float(denominator)


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float | int | None]:
    """Voxel counts, Dice, IoU, precision and recall of two boolean masks of equal shape.

    A ratio whose denominator is 0 is ``None``; Dice and IoU are ``None`` exactly when both masks are empty.
    """
    true_positives = int(np.count_nonzero(prediction & reference))
    prediction_voxels = int(np.count_nonzero(prediction))
    reference_voxels = int(np.count_nonzero(reference))
    false_positives = prediction_voxels - true_positives
    false_negatives = reference_voxels - true_positives
    return {
        "dice": _ratio(2 * true_positives, prediction_voxels + reference_voxels),
        "iou": _ratio(true_positives, true_positives + false_positives + false_negatives),
        "precision": _ratio(true_positives, prediction_voxels),
        "recall": _ratio(true_positives, reference_voxels),
        "true_positives": true_positives,
        "false_positives": false_positives,
        "false_negatives": false_negatives,
        "reference_voxels": reference_voxels,
        "prediction_voxels": prediction_voxels,
    }


def _as_evaluation_space(
    mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop the singleton first axis of a ``(1, H, W)`` image so that 2D data gets 2D surfaces."""
    spacing = tuple(abs(float(s)) for s in spacing)
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries but the mask has {mask.ndim} axes")
    if mask.ndim == 3 and mask.shape[0] == 1:
        return mask[0], spacing[1:]
    return mask, spacing


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask; voxels on the array border count as surface."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def penalty_distance_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the image's physical extent (``shape * spacing``): no two voxels of the image are farther apart."""
    return float(np.sqrt(sum((int(n) * abs(float(s))) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every True voxel. Outside it both masks are empty, so cropping changes no distance."""
    slices = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other_axes))
        slices.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(slices)


def directed_surface_distances(
    prediction: np.ndarray, reference: np.ndarray, *, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``prediction`` to ``∂reference`` and from each of ``∂reference`` to
    ``∂prediction``. Both masks must be non-empty.

    Only the bounding box of both masks is processed: every voxel outside it is background in both masks, so it
    holds no surface voxel and the erosion (border value 0) treats it exactly as the crop edge does.
    """
    prediction, spacing_used = _as_evaluation_space(np.asarray(prediction, dtype=bool), spacing)
    reference, _ = _as_evaluation_space(np.asarray(reference, dtype=bool), spacing)
    if not prediction.any() or not reference.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _bounding_box(prediction | reference)
    prediction_surface = surface_voxels(prediction[box])
    reference_surface = surface_voxels(reference[box])
    distance_to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing_used)
    distance_to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing_used)
    return distance_to_reference[prediction_surface], distance_to_prediction[reference_surface]


def surface_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    percentile: float = 95.0,
) -> dict[str, float | None]:
    """HD95 (or another ``percentile``), ASSD and normalised surface Dice of two boolean masks (module docstring)."""
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    prediction_empty = not prediction.any()
    reference_empty = not reference.any()
    if prediction_empty and reference_empty:
        return {"hd95_mm": None, "assd_mm": None, "nsd": None}
    if prediction_empty or reference_empty:
        evaluated_mask, evaluated_spacing = _as_evaluation_space(prediction, spacing)
        penalty = penalty_distance_mm(evaluated_mask.shape, evaluated_spacing)
        return {"hd95_mm": penalty, "assd_mm": penalty, "nsd": 0.0}
    prediction_to_reference, reference_to_prediction = directed_surface_distances(
        prediction, reference, spacing=spacing
    )
    hausdorff = max(
        float(np.percentile(prediction_to_reference, percentile)),
        float(np.percentile(reference_to_prediction, percentile)),
    )
    surface_count = prediction_to_reference.size + reference_to_prediction.size
    average = (float(prediction_to_reference.sum()) + float(reference_to_prediction.sum())) / surface_count
    # A distance equal to the tolerance (common: 1 mm on a 1 mm grid) must count whatever the rounding.
    limit = tolerance_mm + _DISTANCE_ROUNDING_MM
    within_tolerance = int(np.count_nonzero(prediction_to_reference <= limit)) + int(
        np.count_nonzero(reference_to_prediction <= limit)
    )
    return {"hd95_mm": hausdorff, "assd_mm": average, "nsd": within_tolerance / surface_count}


def compute_binary_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    evaluated: np.ndarray | None = None,
    with_surface_metrics: bool = True,
) -> dict[str, float | int | None]:
    """Every metric of :data:`METRIC_NAMES` plus the voxel counts for one predicted and one reference mask.

    Args:
        prediction, reference: boolean masks of equal shape ``(z, y, x)``.
        spacing: voxel size in mm per array axis.
        tolerance_mm: distance up to which a surface voxel counts as correct for the normalised surface Dice.
        evaluated: optional mask of voxels to evaluate (False where the reference holds the ignore label); voxels
            outside it are removed from both masks before counting or measuring surfaces.
        with_surface_metrics: False skips the distance transforms (surface metrics become ``None``).
    """
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if evaluated is not None:
        prediction = prediction & evaluated
        reference = reference & evaluated
    result = overlap_metrics(prediction, reference)
    if with_surface_metrics:
        result.update(surface_metrics(prediction, reference, spacing=spacing, tolerance_mm=tolerance_mm))
    else:
        result.update(dict.fromkeys(SURFACE_METRIC_NAMES))
    return {name: result[name] for name in (*METRIC_NAMES, *COUNT_NAMES)}
