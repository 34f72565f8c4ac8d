"""Validation after training: predict a fold's held-out cases with the full predictor and score them.

This is the after-training hook ``predict_validation`` that ``autoseg train`` and ``autoseg run`` hand to the
training loop (``training_components``), so the training stage itself never imports inference or evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoseg.evaluation.folders import evaluate_against_ground_truth
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.next_stage import prepare_previous_stage_maps
from autoseg.inference.options import PredictionOptions
from autoseg.records.quality_model import QualityModel
from autoseg.records.work_folder import WorkFolder
from autoseg.training.job import TrainingComponents, default_components


def predict_validation_cases(
    fold_folder: Path,
    *,
    work_folder: WorkFolder,
    configuration_name: str,
    fold: int | str,
    validation_case_ids: Sequence[str],
    device: str,
    precision: str = "auto",
    mirroring: bool = True,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Segment the fold's validation cases from their raw images with the sliding-window predictor (final checkpoint,
    test-time ``mirroring`` as asked) into ``fold_folder/validation/`` (label maps and ``CASE.npz`` probabilities,
    which model selection ensembles), then write ``summary.json`` and ``metrics.csv`` there.

    Returns the foreground-mean and per-class Dice and whether it mirrored. Fold ``all`` has no held-out cases:
    nothing to do.
    """
    if str(fold) == "all":
        return {"skipped": "fold 'all' has no held-out validation cases"}
    dataset = work_folder.read_dataset()
    predictor = load_predictor(
        ModelSource.checkpoints(work_folder, configuration=configuration_name, folds=[fold], checkpoint="final"),
        PredictionOptions(tta=mirroring, device=device, precision=precision),
    )
    output_folder = work_folder.validation(configuration_name, fold)
    output_folder.mkdir(parents=True, exist_ok=True)
    cases = [dataset.case(identifier) for identifier in validation_case_ids]
    # The training labels' volume ranges score the cases; model selection fits the calibration on these rows.
    fingerprint = work_folder.read_fingerprint()
    quality = QualityModel.from_fingerprint(fingerprint) if fingerprint is not None else None
    ModelEnsemble([predictor], quality=quality).predict_files(
        [case.images for case in cases],
        [output_folder / f"{case.identifier}{dataset.file_ending}" for case in cases],
        save_probabilities=True,  # CASE.npz: model selection ensembles configurations on these
        progress=progress,
    )
    summary = evaluate_against_ground_truth(work_folder, output_folder, cases=validation_case_ids, progress=progress)
    return {
        "folder": str(output_folder),
        "mean_dice": summary.foreground_mean["dice"],
        "dice": {entry["name"]: entry["dice"] for entry in summary.mean.values()},
        "test_time_mirroring": mirroring,
    }


def training_components() -> TrainingComponents:
    """The training loop's parts plus what needs inference: cascade inputs and validation prediction."""
    return dataclasses.replace(
        default_components(),
        prepare_previous_stage=prepare_previous_stage_maps,
        after_training_hooks={"predict_validation": predict_validation_cases},
    )
