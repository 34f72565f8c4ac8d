"""Training the second stage of a cascade (``3d_cascade_fullres``): its extra input is the previous stage's
segmentation, and in training that segmentation must be one the previous stage made *without* having seen the case.

Every case is a validation case of exactly one fold of the previous stage (``3d_lowres``), so once all its folds are
trained, fold ``k``'s model segments fold ``k``'s validation cases, and every case gets an out-of-fold segmentation
with realistic errors. It is made exactly as at inference: the previous stage predicts its own preprocessed data
(``Predictor.predict_preprocessed``, mirroring on), the probabilities are resized to this stage's grid and turned
into a label map (``previous_stage_label_map``). The maps are stored as ``uint8``/``uint16`` ``(1, z, y, x)``
arrays next to the previous stage's folds::

    WORK/<dataset>/models/<previous stage>/next_stage/<cascade configuration>/CASE.npy
    WORK/<dataset>/models/<previous stage>/next_stage/<cascade configuration>/fold_K.json  (written last)

``fold_K.json`` records the SHA-256 of the checkpoint that made fold K's maps; a retrained previous stage makes them
again. The patch loader reads the maps beside the image and label patches, augments them like labels and appends
them to the network input as one-hot channels (``PreviousStageToData``), one per foreground label, as at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoseg.errors import UserError
from autoseg.utils.files import atomic_path, read_json, sha256_file, write_json

if TYPE_CHECKING:
    from autoseg.inference.predictor import Predictor

NEXT_STAGE_FOLDER = "next_stage"


def previous_stage_folder(dataset_work_folder: Path, previous_stage: str, configuration_name: str) -> Path:
    return dataset_work_folder / "models" / previous_stage / NEXT_STAGE_FOLDER / configuration_name


def _previous_stage_checkpoints(
    dataset_work_folder: Path, previous_stage: str, configuration_name: str, num_folds: int
) -> list[Path]:
    """The final checkpoint of every fold of the previous stage; refused, naming what to train, if one is missing."""
    checkpoints = []
    for fold in range(num_folds):
        checkpoint = dataset_work_folder / "models" / previous_stage / f"fold_{fold}" / "checkpoint_final.pt"
        if not checkpoint.is_file():
            raise UserError(
                f"{checkpoint} is missing: {configuration_name} trains on out-of-fold segmentations of "
                f"{previous_stage}, so train {previous_stage} on all {num_folds} folds first."
            )
        checkpoints.append(checkpoint)
    return checkpoints


def _write_previous_stage_maps(
    predictor: Predictor,
    cases: list[str],
    *,
    previous_data: Path,
    target_folder: Path,
    output: Path,
    previous_stage: str,
    configuration_name: str,
) -> None:
    """Segment each case's previous-stage data with ``predictor`` and store the label map on the target's grid."""
    from autoseg.inference.label_maps import previous_stage_label_map

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


def prepare_previous_stage_maps(
    *,
    dataset_work_folder: Path,
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
    from autoseg.inference.predictor import Predictor
    from autoseg.planning.plans import load_plans
    from autoseg.preprocessing.preprocess_dataset import PREPROCESSED_FOLDER, data_configuration_name

    plans = load_plans(dataset_work_folder / "plans.json")
    previous_data = dataset_work_folder / PREPROCESSED_FOLDER / data_configuration_name(plans, previous_stage)
    output = previous_stage_folder(dataset_work_folder, previous_stage, configuration_name)
    output.mkdir(parents=True, exist_ok=True)
    checkpoints = _previous_stage_checkpoints(dataset_work_folder, previous_stage, configuration_name, len(splits))
    for fold, (fold_split, checkpoint) in enumerate(zip(splits, checkpoints, strict=True)):
        record_path = output / f"fold_{fold}.json"
        checkpoint_hash = sha256_file(checkpoint)
        cases = sorted(fold_split["val"])
        if record_path.is_file():
            record = read_json(record_path)
            if record.get("checkpoint_sha256") == checkpoint_hash and record.get("cases") == cases:
                continue
        say(f"{configuration_name}: segmenting the {len(cases)} validation cases of {previous_stage} fold {fold} "
            "as the cascade's extra input")
        predictor = Predictor.from_model_folder(
            dataset_work_folder, configuration=previous_stage, folds=[fold], checkpoint="final",
            device=device or "auto", precision=precision,
        )
        _write_previous_stage_maps(
            predictor, cases, previous_data=previous_data, target_folder=target_folder, output=output,
            previous_stage=previous_stage, configuration_name=configuration_name,
        )
        write_json(record_path, {"fold": fold, "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_hash,
                                 "cases": cases})
    return output


class PreviousStageToData:
    """Batch transform: ``seg`` channel 1 (the previous stage's label map, augmented like the labels) becomes
    one-hot data channels, one per foreground label, appended after the image channels; ``seg`` keeps channel 0."""

    def __init__(self, foreground_labels: Sequence[int]) -> None:
        self.foreground_labels = tuple(int(label) for label in foreground_labels)

    def __call__(self, **data_dict):
        seg = data_dict["seg"]
        previous = np.rint(seg[:, 1:2])
        channels = [(previous == label).astype(np.float32) for label in self.foreground_labels]
        data_dict["data"] = np.concatenate([data_dict["data"], *channels], axis=1)
        data_dict["seg"] = seg[:, :1]
        return data_dict
