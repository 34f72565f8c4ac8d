"""The cascade's extra training input: out-of-fold segmentations of every case by the previous stage.

See ``autoseg.training.cascade`` for why they must be out-of-fold. Each of the previous stage's folds segments its own
validation cases from their preprocessed data, exactly as at inference; the label maps are resized to the cascade
stage's grid and stored under ``WorkFolder.next_stage``, with ``fold_K.json`` (the checkpoint's SHA-256) written
last, so a retrained previous stage makes them again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.inference.label_maps import previous_stage_label_map
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.io.case_arrays import read_array, save_array
from autoseg.records.plans import load_plans
from autoseg.records.preprocessed_case import PreprocessedCase, previous_stage_map_path
from autoseg.records.previous_stage_maps import PreviousStageMapsRecord
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import sha256_file


def prepare_previous_stage_maps(
    *,
    work_folder: WorkFolder,
    configuration_name: str,
    previous_stage: str,
    splits: Sequence[dict],
    target_folder: Path,
    device: str | None = None,
    precision: str = "auto",
    say: Callable[[str], None] = print,
) -> Path:
    """Make (or reuse) the out-of-fold previous-stage label map of every case on ``target_folder``'s grid.

    ``target_folder`` holds this stage's preprocessed ``CASE.npy``; the previous stage's preprocessed data and the
    final checkpoint of every one of its folds must exist, otherwise a ``UserError`` says what to run.
    """
    plans = load_plans(work_folder.plans)
    previous_data = work_folder.preprocessed(plans.data_configuration(previous_stage))
    output = work_folder.next_stage(previous_stage, configuration_name)
    output.mkdir(parents=True, exist_ok=True)
    patch_size = plans.configuration(configuration_name).patch_size  # chunks of a compressed map
    checkpoints = []
    for fold in range(len(splits)):
        checkpoint = work_folder.checkpoint(previous_stage, fold, "final")
        if not checkpoint.is_file():
            raise UserError(
                f"{checkpoint} is missing: {configuration_name} trains on out-of-fold segmentations of "
                f"{previous_stage}, so train {previous_stage} on all {len(splits)} folds first."
            )
        checkpoints.append(checkpoint)
    for fold, (fold_split, checkpoint) in enumerate(zip(splits, checkpoints, strict=True)):
        record_path = output / f"fold_{fold}.json"
        checkpoint_hash = sha256_file(checkpoint)
        cases = sorted(fold_split["val"])
        record = PreviousStageMapsRecord.read(record_path)
        if record is not None and record.made_by(checkpoint_hash, cases):
            continue
        say(f"{configuration_name}: segmenting the {len(cases)} validation cases of {previous_stage} fold {fold} "
            "as the cascade's extra input")
        predictor = load_predictor(
            ModelSource.checkpoints(work_folder, configuration=previous_stage, folds=[fold], checkpoint="final"),
            PredictionOptions(device=device or "auto", precision=precision),
        )
        for identifier in cases:
            source = PreprocessedCase.at(previous_data, identifier)
            target = PreprocessedCase.at(target_folder, identifier)
            for path in (source.stored_image_path, target.stored_image_path):
                if not path.is_file():
                    raise UserError(f"{path} is missing: preprocess {previous_stage} and {configuration_name} first.")
            probabilities = predictor.predict_preprocessed(read_array(source.stored_image_path))
            target_shape = tuple(target.open_image().shape[1:])
            label_map = previous_stage_label_map(probabilities, target_shape, dataset=predictor.dataset)
            _store_label_map(label_map[None], output, target, patch_size)
        PreviousStageMapsRecord(fold, str(checkpoint), checkpoint_hash, cases).write(record_path)
    return output


def _store_label_map(label_map: np.ndarray, output: Path, target: PreprocessedCase, patch_size: Sequence[int]) -> None:
    """Store a previous-stage label map in its case's format (``CASE.b2nd`` next to a compressed case, chunked like
    it, else ``CASE.npy``) and remove one of the other format left by an earlier run."""
    path = previous_stage_map_path(output, target.identifier, compressed=target.is_compressed)
    save_array(label_map, path, patch_size=patch_size)
    previous_stage_map_path(output, target.identifier, compressed=not target.is_compressed).unlink(missing_ok=True)
