"""Evaluate a folder of predicted label maps against a folder of reference label maps, case by case, in parallel.

Files are matched by case identifier (the file name without its image ending, so ``a.nii.gz`` matches ``a.nrrd``).
Each pair must share its geometry exactly: a prediction on another grid cannot be compared voxel by voxel, and
comparing it anyway would report a silently wrong number. Results are written as ``summary.json`` (means per
target, the foreground mean, and every case) and ``metrics.csv`` (one row per case and target).

Example (``prediction_folder`` holds the reference label maps of three cases, each with a false 2x2x2 block of
class 1 in a corner):
    >>> summary = evaluate_folders(prediction_folder, reference_folder, output_folder="evaluation")
    >>> {key: round(target["dice"], 3) for key, target in summary.mean.items()}
    {'1': 0.998, '2': 1.0}
    >>> # HD95 ignores the few false voxels, the average surface distance (mm) does not:
    >>> round(summary.mean["1"]["hd95_mm"], 2), round(summary.mean["1"]["assd_mm"], 2)
    (0.0, 0.19)
    >>> sorted(path.name for path in Path("evaluation").iterdir())
    ['metrics.csv', 'summary.json']
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import UserError
from autoseg.evaluation.metrics import COUNT_NAMES, DEFAULT_TOLERANCE_MM, METRIC_NAMES, compute_binary_metrics
from autoseg.evaluation.targets import (
    EvaluationTarget,
    describe_targets,
    targets_from_dataset_json,
    targets_from_label_values,
)
from autoseg.io.images import Geometry, file_ending, read_image
from autoseg.records.evaluation_summary import SUMMARY_FILE_NAME, EvaluationSummary
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import atomic_path
from autoseg.utils.parallel import parallel_starmap

METRICS_CSV_FILE_NAME = "metrics.csv"
_GEOMETRY_RELATIVE_TOLERANCE = 1e-4
_GEOMETRY_ABSOLUTE_TOLERANCE_MM = 1e-3


def label_files_by_case(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map case identifier -> image file for every image file directly inside ``folder`` (hidden files skipped).

    Raises:
        UserError: the folder does not exist, or two files share one identifier (``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found.")
    files: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        ending = file_ending(entry)
        if entry.name.startswith(".") or not entry.is_file() or ending is None:
            continue
        identifier = entry.name[: -len(ending)]
        if identifier in files:
            raise UserError(
                f"{entry}: case {identifier!r} also exists as {files[identifier].name}; keep one file per case."
            )
        files[identifier] = entry
    return files


def check_same_geometry(prediction: Geometry, reference: Geometry, case: str, prediction_path: Path) -> None:
    """Raise a UserError naming the case unless shape, spacing, origin and direction agree (float32 header noise
    allowed)."""
    if tuple(prediction.shape) != tuple(reference.shape):
        raise UserError(
            f"{prediction_path}: case {case} has shape {list(prediction.shape)} but its reference has "
            f"{list(reference.shape)}; predictions must be on the reference's grid."
        )
    for name in ("spacing", "origin", "direction"):
        predicted_values = np.asarray(getattr(prediction, name), dtype=float)
        reference_values = np.asarray(getattr(reference, name), dtype=float)
        if not np.allclose(
            predicted_values, reference_values, rtol=_GEOMETRY_RELATIVE_TOLERANCE, atol=_GEOMETRY_ABSOLUTE_TOLERANCE_MM
        ):
            raise UserError(
                f"{prediction_path}: case {case} has {name} {predicted_values.round(6).tolist()} but its reference "
                f"has {reference_values.round(6).tolist()}; predictions must be on the reference's grid."
            )


def evaluate_case(
    case: str,
    prediction_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    *,
    targets: Sequence[EvaluationTarget],
    ignore_label: int | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    with_surface_metrics: bool = True,
) -> dict[str, Any]:
    """Metrics of every target for one case: ``{"case", "prediction", "reference", "metrics": {key: {...}}}``."""
    prediction_path, reference_path = Path(prediction_path), Path(reference_path)
    prediction = read_image(prediction_path)
    reference = read_image(reference_path)
    check_same_geometry(prediction.geometry, reference.geometry, case, prediction_path)
    evaluated = None if ignore_label is None else reference.array != ignore_label
    metrics = {
        target.key: compute_binary_metrics(
            target.mask(prediction.array),
            target.mask(reference.array),
            spacing=reference.geometry.spacing,
            tolerance_mm=tolerance_mm,
            evaluated=evaluated,
            with_surface_metrics=with_surface_metrics,
        )
        for target in targets
    }
    return {"case": case, "prediction": str(prediction_path), "reference": str(reference_path), "metrics": metrics}


def mean_of_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None (undefined metrics are left out); None when none is defined."""
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarize_cases(per_case: Sequence[dict], targets: Sequence[EvaluationTarget]) -> dict[str, Any]:
    """Mean of each metric per target over the cases where it is defined, and the foreground mean.

    The foreground mean of a metric is the mean over targets of the per-target means (each class weighs the same,
    however many voxels it has). ``pooled_dice`` is Dice over all voxels of all cases together.
    """
    mean: dict[str, dict[str, Any]] = {}
    for target in targets:
        rows = [case["metrics"][target.key] for case in per_case]
        entry: dict[str, Any] = {"name": target.name}
        for metric in METRIC_NAMES:
            entry[metric] = mean_of_defined(row[metric] for row in rows)
        entry["cases"] = len(rows)
        entry["cases_both_empty"] = sum(1 for row in rows if row["dice"] is None)
        true_positives = sum(row["true_positives"] for row in rows)
        denominator = sum(row["prediction_voxels"] + row["reference_voxels"] for row in rows)
        entry["pooled_dice"] = None if denominator == 0 else 2.0 * true_positives / denominator
        mean[target.key] = entry
    foreground_mean = {
        metric: mean_of_defined(mean[target.key][metric] for target in targets)
        for metric in (*METRIC_NAMES, "pooled_dice")
    }
    return {"mean": mean, "foreground_mean": foreground_mean}


def write_metrics_csv(
    path: str | os.PathLike[str], per_case: Sequence[dict], targets: Sequence[EvaluationTarget]
) -> None:
    """One row per case and target; undefined metrics are empty cells."""
    columns = ["case", "target", "target_name", *METRIC_NAMES, *COUNT_NAMES]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for case in per_case:
            for target in targets:
                row = case["metrics"][target.key]
                values = ["" if row[name] is None else row[name] for name in (*METRIC_NAMES, *COUNT_NAMES)]
                writer.writerow([case["case"], target.key, target.name, *values])


def run_over_cases(function: Callable, arguments: Sequence[tuple], *, workers: int, description: str,
                   progress: bool = True) -> list:
    """``[function(*a) for a in arguments]``, over ``workers`` spawned processes (spawn: safe after torch is loaded);
    a progress bar when ``progress`` is set and there is more than one case."""
    return parallel_starmap(function, arguments, workers=workers, description=description,
                            progress=progress and len(arguments) >= 2)


def _label_values_in_file(path: Path) -> list[int]:
    return [int(v) for v in np.unique(read_image(path).array)]


def _evaluate_case_star(
    case: str, prediction_path: Path, reference_path: Path, options: dict
) -> dict[str, Any]:
    return evaluate_case(case, prediction_path, reference_path, **options)


def _cases_to_evaluate(
    prediction_folder: str | os.PathLike[str],
    reference_folder: str | os.PathLike[str],
    cases: Sequence[str] | None,
    *,
    prediction_files: dict[str, Path],
    reference_files: dict[str, Path],
) -> list[str]:
    """``cases`` (default: every reference), refused when one lacks its reference or its prediction."""
    chosen = sorted(reference_files) if cases is None else list(dict.fromkeys(cases))
    if not chosen:
        raise UserError(f"{reference_folder}: no reference label files to evaluate.")
    missing_references = [case for case in chosen if case not in reference_files]
    if missing_references:
        raise UserError(
            f"{reference_folder}: no reference for {len(missing_references)} case(s): "
            f"{', '.join(missing_references[:10])}{' ...' if len(missing_references) > 10 else ''}."
        )
    missing_predictions = [case for case in chosen if case not in prediction_files]
    if missing_predictions:
        raise UserError(
            f"{prediction_folder}: {len(missing_predictions)} prediction(s) missing: "
            f"{', '.join(missing_predictions[:10])}{' ...' if len(missing_predictions) > 10 else ''}."
        )
    return chosen


def _targets_found_in_references(
    reference_folder: str | os.PathLike[str], reference_paths: list[Path], *, ignore_label: int | None, workers: int,
    progress: bool = True,
) -> tuple[EvaluationTarget, ...]:
    """One target per non-zero label value present in the references (the ignore label aside)."""
    value_lists = run_over_cases(
        _label_values_in_file, [(path,) for path in reference_paths], workers=workers, description="labels",
        progress=progress,
    )
    found = {value for values in value_lists for value in values}
    targets = targets_from_label_values(found - ({ignore_label} if ignore_label is not None else set()))
    if not targets:
        raise UserError(
            f"{reference_folder}: the references contain no foreground label; pass the labels to evaluate."
        )
    return tuple(targets)


def evaluate_folders(
    prediction_folder: str | os.PathLike[str],
    reference_folder: str | os.PathLike[str],
    *,
    targets: Sequence[EvaluationTarget] | None = None,
    ignore_label: int | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    cases: Sequence[str] | None = None,
    workers: int = 1,
    output_folder: str | os.PathLike[str] | None = None,
    with_surface_metrics: bool = True,
    progress: bool = True,
) -> EvaluationSummary:
    """Evaluate predictions against references and return (and optionally write) the summary.

    Args:
        targets: classes/regions to evaluate; default: every non-zero value found in the references.
        ignore_label: reference value whose voxels are excluded from every metric.
        cases: identifiers to evaluate (each needs a prediction and a reference); default: every reference, which
            makes a missing prediction an error.
        workers: processes reading and evaluating cases in parallel.
        output_folder: where ``summary.json`` and ``metrics.csv`` are written (atomically); None writes nothing.

    Raises:
        UserError: a folder is missing, a prediction or reference is missing (all are named), or a pair's
            geometry differs (the case is named).
    """
    prediction_files = label_files_by_case(prediction_folder)
    reference_files = label_files_by_case(reference_folder)
    chosen = _cases_to_evaluate(
        prediction_folder, reference_folder, cases, prediction_files=prediction_files, reference_files=reference_files
    )
    if targets is None:
        targets = _targets_found_in_references(
            reference_folder, [reference_files[c] for c in chosen], ignore_label=ignore_label, workers=workers,
            progress=progress,
        )
    targets = tuple(targets)
    options = {
        "targets": targets, "ignore_label": ignore_label, "tolerance_mm": tolerance_mm,
        "with_surface_metrics": with_surface_metrics,
    }
    per_case = run_over_cases(
        _evaluate_case_star, [(case, prediction_files[case], reference_files[case], options) for case in chosen],
        workers=workers, description="evaluate", progress=progress,
    )
    summary = EvaluationSummary.from_json({
        "prediction_folder": str(Path(prediction_folder).resolve()),
        "reference_folder": str(Path(reference_folder).resolve()),
        "tolerance_mm": tolerance_mm,
        "ignore_label": ignore_label,
        "targets": describe_targets(targets),
        **summarize_cases(per_case, targets),
        "per_case": per_case,
    })
    if output_folder is not None:
        write_metrics_csv(Path(output_folder) / METRICS_CSV_FILE_NAME, per_case, targets)
        summary.write(Path(output_folder) / SUMMARY_FILE_NAME)
    return summary


def evaluate_against_ground_truth(
    work_folder: WorkFolder,
    prediction_folder: str | os.PathLike[str],
    *,
    cases: Sequence[str],
    workers: int = 1,
    progress: bool = True,
) -> EvaluationSummary:
    """Evaluate ``cases`` of ``prediction_folder`` against ``WORK/<dataset>/ground_truth`` with the dataset's own
    classes, regions and ignore label; writes ``summary.json`` and ``metrics.csv`` into ``prediction_folder``."""
    targets, ignore_label = targets_from_dataset_json(work_folder.dataset_json)
    return evaluate_folders(
        prediction_folder, work_folder.ground_truth, targets=targets, ignore_label=ignore_label, cases=list(cases),
        output_folder=prediction_folder, workers=workers, progress=progress,
    )
