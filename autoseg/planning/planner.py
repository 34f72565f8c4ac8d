"""Turn a fingerprint into plans: which configurations to train, at what spacing, with what network, patch and batch."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from autoseg import __version__
from autoseg.errors import UserError
from autoseg.planning.layout import (
    CASCADE_CONFIGURATIONS,
    COARSENING_FACTORS,
    ComputeBudget,
    choose_layout,
    choose_variant,
    compute_plan,
    ladder,
)
from autoseg.planning.memory_model import PRECISIONS
from autoseg.planning.normalization import plan_normalization
from autoseg.planning.patch_and_batch import FittedPatch, fit_patch_and_batch
from autoseg.planning.presets import PRESETS
from autoseg.planning.resampling import plan_resampling
from autoseg.planning.target_spacing import target_spacing, transpose_for_spacing
from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import Fingerprint, FingerprintCase
from autoseg.records.plans import Plans, compact_configurations

# A low-resolution stage is planned when the full-resolution patch covers less than this fraction of the median image.
LOWRES_COVERAGE_THRESHOLD = 0.25
# Growth of the low-resolution spacing per step while searching for a patch that covers enough of the image.
LOWRES_SPACING_STEP = 1.03
# The low-resolution stage is dropped when it shrinks the median image by less than this factor (not worth a cascade).
LOWRES_MINIMUM_REDUCTION = 2.0
PARENTS = {"3d_lowres": "3d_fullres", "3d_cascade_fullres": "3d_fullres"}


def _configuration(
    fitted: FittedPatch,
    *,
    dimension: int,
    spacing: list[float],
    median_shape: list[float],
    normalization: list[dict],
    resampling: dict,
    batch_dice: bool,
) -> dict:
    return {
        "dimension": dimension,
        "spacing": [float(v) for v in spacing],
        "median_shape": [round(float(v), 1) for v in median_shape],
        "patch_size": fitted.patch_size,
        "batch_size": fitted.batch_size,
        "network": fitted.network.to_json(),
        "normalization": normalization,
        "resampling": resampling,
        "batch_dice": batch_dice,
        "estimated_memory_gb": round(fitted.estimated_memory_gb, 3),
    }


def _grow_lowres_spacing(spacing: list[float]) -> list[float]:
    """One step coarser: the finer axes catch up with the coarsest first, then all axes grow together."""
    coarsest = max(spacing)
    if all(math.isclose(value, coarsest, rel_tol=1e-9) for value in spacing):
        return [value * LOWRES_SPACING_STEP for value in spacing]
    return [min(value * LOWRES_SPACING_STEP, coarsest) if value < coarsest else value for value in spacing]


@dataclasses.dataclass(frozen=True)
class _PlanningGeometry:
    """The training cases' sizes as the plans describe them, resampled to the full-resolution spacing.

    Names ending in ``_t`` are in transposed axis order (the coarsest axis first), as every configuration is.
    """

    forward: list[int]  # transpose_forward
    backward: list[int]  # transpose_backward
    spacing_t: list[float]  # full-resolution target spacing
    median_t: list[float]  # median shape at that spacing
    original_spacing_t: list[float]  # median spacing of the raw images
    original_median_shape_t: list[float]  # median shape of the raw images (after cropping)
    dataset_voxels: float  # voxels of all cases at the target spacing
    is_2d: bool


def _planning_geometry(fingerprint: Fingerprint, cases: list[FingerprintCase]) -> _PlanningGeometry:
    is_2d = bool(fingerprint.is_2d)
    spacings = np.array([case.spacing for case in cases], dtype=np.float64)
    shapes = np.array([case.shape_after_crop for case in cases], dtype=np.float64)
    fullres_spacing = target_spacing(spacings, shapes, is_2d=is_2d)
    forward, backward = transpose_for_spacing(fullres_spacing, is_2d=is_2d)
    resampled = shapes * spacings / np.asarray(fullres_spacing)
    if is_2d:
        resampled[:, 0] = shapes[:, 0]
    resampled = resampled[:, forward]
    return _PlanningGeometry(
        forward=forward,
        backward=backward,
        spacing_t=[fullres_spacing[axis] for axis in forward],
        median_t=[float(v) for v in np.median(resampled, axis=0)],
        original_spacing_t=[float(v) for v in np.median(spacings, axis=0)[forward]],
        original_median_shape_t=[float(v) for v in np.median(shapes, axis=0)[forward]],
        dataset_voxels=float(np.prod(resampled, axis=1).sum()),
        is_2d=is_2d,
    )


def _memory_budget(preset: str, gpu_memory_gb: float | None, training_precision: str) -> float:
    """The training-memory budget in GB, after refusing an unknown preset or precision."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if training_precision not in PRECISIONS:
        raise UserError(f"unknown training precision {training_precision!r}; choose one of {', '.join(PRECISIONS)}.")
    budget = float(gpu_memory_gb if gpu_memory_gb is not None else PRESETS[preset].gpu_memory_gb)
    if budget <= 0:
        raise UserError(f"--gpu-memory must be positive, got {budget}.")
    return budget


def _plan_configurations(
    fit: Callable[[list[float], list[float]], FittedPatch], geometry: _PlanningGeometry, normalization: list[dict]
) -> dict[str, dict]:
    """Every configuration in full: ``2d``, and for 3D data ``3d_fullres`` plus, when worth it, the cascade."""
    spacing_t, median_t, original_spacing_t = geometry.spacing_t, geometry.median_t, geometry.original_spacing_t
    full: dict[str, dict] = {}
    full["2d"] = _configuration(
        fit(spacing_t[1:], median_t[1:]),
        dimension=2,
        spacing=spacing_t,
        median_shape=median_t,
        normalization=normalization,
        # The 2d configuration of 3D data resamples whole volumes, exactly like 3d_fullres.
        resampling=plan_resampling(original_spacing_t, spacing_t, is_2d=geometry.is_2d),
        batch_dice=True,
    )
    if geometry.is_2d:
        return full
    fullres = fit(spacing_t, median_t)
    full["3d_fullres"] = _configuration(
        fullres,
        dimension=3,
        spacing=spacing_t,
        median_shape=median_t,
        normalization=normalization,
        resampling=plan_resampling(original_spacing_t, spacing_t, is_2d=False),
        batch_dice=False,
    )
    if math.prod(fullres.patch_size) / math.prod(median_t) < LOWRES_COVERAGE_THRESHOLD:
        lowres = _lowres_configuration(fit, geometry, normalization)
        if lowres is not None:
            # As the reference: with a cascade, 3d_fullres (and the cascade, which inherits it) pools Dice over the
            # batch, whose patches each cover little of these large images.
            full["3d_fullres"]["batch_dice"] = True
            full["3d_lowres"] = lowres
            full["3d_cascade_fullres"] = {**full["3d_fullres"], "previous_stage": "3d_lowres"}
    return full


def _lowres_configuration(
    fit: Callable[[list[float], list[float]], FittedPatch], geometry: _PlanningGeometry, normalization: list[dict]
) -> dict | None:
    """The ``3d_lowres`` stage at the finest spacing whose patch covers enough of the median image.

    None when that spacing shrinks the median image too little to be worth a cascade.
    """
    spacing_t, median_t = geometry.spacing_t, geometry.median_t
    lowres_spacing = list(spacing_t)
    for _ in range(1000):
        lowres_spacing = _grow_lowres_spacing(lowres_spacing)
        lowres_median = [m * s / ls for m, s, ls in zip(median_t, spacing_t, lowres_spacing, strict=True)]
        lowres = fit(lowres_spacing, lowres_median)
        if math.prod(lowres.patch_size) / math.prod(lowres_median) >= LOWRES_COVERAGE_THRESHOLD:
            break
    if math.prod(median_t) / math.prod(lowres_median) < LOWRES_MINIMUM_REDUCTION:
        return None
    return _configuration(
        lowres,
        dimension=3,
        spacing=lowres_spacing,
        median_shape=lowres_median,
        normalization=normalization,
        resampling=plan_resampling(geometry.original_spacing_t, lowres_spacing, is_2d=False),
        batch_dice=False,
    )


def _fit_to_compute(
    full: dict[str, dict], fit: Callable[[list[float], list[float]], FittedPatch], geometry: _PlanningGeometry,
    normalization: list[dict], budget: ComputeBudget, memory_gb: float,
) -> tuple[dict[str, dict], dict]:
    """The configurations refitted to the time budget (see ``autoseg.planning.layout``) and the ``compute`` record.

    Configurations the layout does not train are fitted to the same seconds per fold, so training them later by
    hand stays affordable. The cascade is kept only while ``3d_fullres``, which it inherits, keeps its plan, or when
    the user named a cascade stage: then both stages are fitted too, on every fold (the cascade learns from
    out-of-fold segmentations of all five folds of ``3d_lowres``).
    """

    def refit(name: str, spacing: list[float], memory_share: float) -> dict:
        dimension = full[name]["dimension"]
        median = [m * s / n for m, s, n in zip(geometry.median_t, geometry.spacing_t, spacing, strict=True)]
        resampling = plan_resampling(geometry.original_spacing_t, spacing, is_2d=geometry.is_2d)
        fitted = fit(spacing[-dimension:], median[-dimension:], budget_gb=memory_gb * memory_share)
        return _configuration(fitted, dimension=dimension, spacing=spacing,
                              median_shape=median, normalization=normalization, resampling=resampling,
                              batch_dice=full[name]["batch_dice"])

    fullres_spacing = [geometry.spacing_t[axis] for axis in geometry.backward]
    per_class = budget.label_round_trip(fullres_spacing, COARSENING_FACTORS)
    cascade_named = set(CASCADE_CONFIGURATIONS) <= set(full) and bool(set(budget.configurations or ()) &
                                                                        set(CASCADE_CONFIGURATIONS))
    ladders = {name: ladder(name, configuration, refit, budget, per_class)
               for name, configuration in full.items() if name not in CASCADE_CONFIGURATIONS}
    if cascade_named:
        # The low-resolution stage's grids are coarsened from its own spacing: its labels' round trip is measured
        # from there (factor 1: what its planned grid already loses).
        lowres_spacing = [full["3d_lowres"]["spacing"][axis] for axis in geometry.backward]
        lowres_per_class = budget.label_round_trip(lowres_spacing, (1.0, *COARSENING_FACTORS))
        ladders["3d_lowres"] = ladder("3d_lowres", full["3d_lowres"], refit, budget, lowres_per_class)
        # The user asked for the cascade (``--configs``): both stages are fitted to the budget like the others. The
        # cascade's full-resolution stage is a variant of 3d_fullres (which it inherits) that also reads the
        # low-resolution segmentation.
        ladders["3d_cascade_fullres"] = [
            dataclasses.replace(variant, configuration={**variant.configuration, "previous_stage": "3d_lowres"})
            for variant in ladders["3d_fullres"]
        ]
    layout = choose_layout(ladders, budget, primary="3d_fullres" if "3d_fullres" in full else "2d")
    fitted = dict(full)
    for name, variants in ladders.items():
        fitted[name] = layout.chosen.get(name, choose_variant(variants, layout.seconds_per_fold)).configuration
    if not cascade_named and "3d_fullres" in fitted and fitted["3d_fullres"] != full["3d_fullres"]:
        fitted = {name: value for name, value in fitted.items() if name not in CASCADE_CONFIGURATIONS}
        fitted["3d_fullres"] = {**fitted["3d_fullres"], "batch_dice": False}  # no cascade: the reference's default
    return fitted, compute_plan(layout, budget, per_class).to_json()


def plan_experiment(
    fingerprint: Fingerprint,
    dataset: RawDataset,
    *,
    preset: str = "default",
    gpu_memory_gb: float | None = None,
    training_precision: str = "mixed",
    compute: ComputeBudget | None = None,
) -> Plans:
    """Plans (see docs/design.md and docs/planning.md) for ``dataset`` described by ``fingerprint``.

    Args:
        fingerprint: the record of ``autoseg.fingerprint.compute_fingerprint``.
        dataset: the raw dataset (channel count, classes).
        preset: one of ``PRESETS`` (network family and default budget).
        gpu_memory_gb: training-memory budget per GPU; None takes the preset's (8 GB for the default).
        training_precision: ``mixed`` (CUDA training) or ``float32``: which memory coefficients to plan with.
        compute: a time budget and the machine's throughput; None plans for memory alone (the reference's plans).
    """
    budget = _memory_budget(preset, gpu_memory_gb, training_precision)
    cases = list(fingerprint.cases.values())
    if not cases:
        raise UserError(f"{dataset.root}: the fingerprint lists no training case.")
    geometry = _planning_geometry(fingerprint, cases)
    normalization = plan_normalization(fingerprint)
    fit = functools.partial(
        fit_patch_and_batch,
        preset=PRESETS[preset],
        in_channels=dataset.num_channels,
        out_channels=dataset.num_output_channels,
        budget_gb=budget,
        dataset_voxels=geometry.dataset_voxels,
        precision=training_precision,
    )
    full = _plan_configurations(fit, geometry, normalization)
    extra = {}
    if compute is not None:
        full, extra["compute"] = _fit_to_compute(full, fit, geometry, normalization, compute, budget)
    return Plans.from_json({
        "autoseg_version": __version__,
        "plans_name": f"autoseg_{preset}",
        "dataset_name": Path(dataset.root).name,
        "preset": preset,
        "gpu_memory_gb": budget,
        "training_precision": training_precision,
        "fingerprint_signature": fingerprint.inputs_signature,
        "transpose_forward": geometry.forward,
        "transpose_backward": geometry.backward,
        "original_median_spacing": geometry.original_spacing_t,
        "original_median_shape": geometry.original_median_shape_t,
        **extra,
        "configurations": compact_configurations(full, PARENTS),
    })
