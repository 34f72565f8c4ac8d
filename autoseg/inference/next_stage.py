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
from autoseg.records.plans import load_plans
from autoseg.records.previous_stage_maps import PreviousStageMapsRecord
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import atomic_path, sha256_file


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
            source = previous_data / f"{identifier}.npy"
            target = target_folder / f"{identifier}.npy"
            for path in (source, target):
                if not path.is_file():
                    raise UserError(f"{path} is missing: preprocess {previous_stage} and {configuration_name} first.")
            target_shape = tuple(np.load(target, mmap_mode="r").shape[1:])
            probabilities = predictor.predict_preprocessed(np.load(source))
            label_map = previous_stage_label_map(probabilities, target_shape, dataset=predictor.dataset)
            with atomic_path(output / f"{identifier}.npy", durable=False) as temporary, open(temporary, "wb") as file:
                np.save(file, label_map[None])
        PreviousStageMapsRecord(fold, str(checkpoint), checkpoint_hash, cases).write(record_path)
    return output
