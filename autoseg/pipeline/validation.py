"""Validation after training: predict a fold's held-out cases with the full predictor and score them.

This is the after-training hook ``predict_validation`` that ``autoseg train`` and ``autoseg run`` hand to the
training loop (``training_components``), so the training stage itself never imports inference or evaluation.
"""

from __future__ import annotations

import dataclasses
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.evaluation.folders import evaluate_against_ground_truth
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.next_stage import prepare_previous_stage_maps
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.io.images import read_image, write_image
from autoseg.records.quality_model import QualityModel
from autoseg.records.work_folder import WorkFolder
from autoseg.training.job import TrainingComponents, default_components
from autoseg.transforms.appearance import perturb_appearance

CALIBRATION_COPIES = 20  # validation cases per fold predicted once more with their appearance changed
CHANGE_STRENGTHS = (0.25, 2.0)  # drawn uniformly: from barely visible to a failing model


def predict_validation_cases(
    fold_folder: Path,
    *,
    work_folder: WorkFolder,
    configuration_name: str,
    fold: int | str,
    validation_case_ids: Sequence[str],
    device: str,
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, Any] | None:
    """Segment the fold's validation cases from their raw images with the sliding-window predictor (final checkpoint,
    mirroring on) into ``fold_folder/validation/`` (label maps and ``CASE.npz`` probabilities, which model selection
    ensembles), then write ``summary.json`` and ``metrics.csv`` there.

    Returns the foreground-mean and per-class Dice. Fold ``all`` has no held-out cases: nothing to do.
    """
    if str(fold) == "all":
        return {"skipped": "fold 'all' has no held-out validation cases"}
    dataset = work_folder.read_dataset()
    predictor = load_predictor(
        ModelSource.checkpoints(work_folder, configuration=configuration_name, folds=[fold], checkpoint="final"),
        PredictionOptions(device=device, precision=precision),
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
    predict_changed_copies(work_folder, configuration_name, fold, validation_case_ids, predictor, quality,
                           progress=progress)
    return {
        "folder": str(output_folder),
        "mean_dice": summary.foreground_mean["dice"],
        "dice": {entry["name"]: entry["dice"] for entry in summary.mean.values()},
    }


def calibration_cases(validation_case_ids: Sequence[str]) -> list[str]:
    """The validation cases also predicted with their appearance changed: at most ``CALIBRATION_COPIES``, spread
    over the sorted list."""
    ordered = sorted(validation_case_ids)
    if len(ordered) <= CALIBRATION_COPIES:
        return ordered
    step = (len(ordered) - 1) / (CALIBRATION_COPIES - 1)
    return [ordered[round(index * step)] for index in range(CALIBRATION_COPIES)]


def predict_changed_copies(
    work_folder: WorkFolder, configuration_name: str, fold: int | str, validation_case_ids: Sequence[str],
    predictor: Predictor, quality: QualityModel | None, *, progress: bool,
) -> None:
    """Predict one appearance-changed copy (``autoseg.transforms.appearance``, strength drawn from
    ``CHANGE_STRENGTHS`` per case, seeded by its name) of each ``calibration_cases`` case into
    ``validation_changed/`` with its quality rows and evaluation: model selection fits the quality calibration on
    these and the clean validation cases. The changed images are deleted afterwards."""
    if not predictor.options.quality:
        return
    dataset = work_folder.read_dataset()
    output = work_folder.validation_changed(configuration_name, fold)
    inputs = output / "changed_images"
    inputs.mkdir(parents=True, exist_ok=True)
    identifiers = calibration_cases(validation_case_ids)
    images = []
    for identifier in identifiers:
        rng = np.random.default_rng(zlib.crc32(identifier.encode()))
        strength = float(rng.uniform(*CHANGE_STRENGTHS))
        paths = []
        for channel, path in enumerate(dataset.case(identifier).images):
            image = read_image(path)
            changed = perturb_appearance(image.array, rng, strength=strength, spacing=image.geometry.spacing)
            paths.append(inputs / f"{identifier}_{channel:04d}.nii.gz")
            write_image(changed, image.geometry, paths[-1])
        images.append(paths)
    ModelEnsemble([predictor], quality=quality).predict_files(
        images, [output / f"{identifier}{dataset.file_ending}" for identifier in identifiers], progress=progress
    )
    shutil.rmtree(inputs)
    evaluate_against_ground_truth(work_folder, output, cases=identifiers, progress=progress)


def training_components() -> TrainingComponents:
    """The training loop's parts plus what needs inference: cascade inputs and validation prediction."""
    return dataclasses.replace(
        default_components(),
        prepare_previous_stage=prepare_previous_stage_maps,
        after_training_hooks={"predict_validation": predict_validation_cases},
    )
