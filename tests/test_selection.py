"""Model selection on cross-validation: configurations and their ensemble are scored, the best is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.io.images import Geometry, read_image, write_image
from autoseg.pipeline.selection import find_best
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import read_json, write_json

GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0), origin=(5.0, -3.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    shape=(6, 16, 16))


def _truth(index: int) -> np.ndarray:
    label = np.zeros(GEOMETRY.shape, dtype=np.uint8)
    label[1:5, 3 + index % 3 : 10 + index % 3, 4:11] = 1
    return label


def _one_hot(label: np.ndarray, confidence: float) -> np.ndarray:
    foreground = np.where(label == 1, confidence, 1 - confidence).astype(np.float32)
    return np.stack([1 - foreground, foreground])


def _work_folder(tmp_path: Path) -> Path:
    work = tmp_path / "Dataset900_Selection"
    cases = [f"case_{i}" for i in range(6)]
    dataset = RawDataset(
        root=str(tmp_path / "raw"), name="Selection", channel_names=("MRI",), labels={"background": 0, "organ": 1},
        file_ending=".nii.gz", num_training=6,
        training_cases=tuple(Case(c, (f"{c}_0000.nii.gz",), f"{c}.nii.gz") for c in cases),
    )
    write_json(work / "dataset.json", dataset.to_dict())
    write_json(work / "splits.json", [{"train": cases[3:], "val": cases[:3]}, {"train": cases[:3], "val": cases[3:]}])
    for index, case in enumerate(cases):
        truth = _truth(index)
        write_image(truth, GEOMETRY, work / "ground_truth" / f"{case}.nii.gz")
        shifted = np.roll(truth, 3, axis=2)
        for configuration, prediction, confidence in (("good", truth, 1.0), ("shifted", shifted, 0.6)):
            fold = 0 if index < 3 else 1
            folder = work / "models" / configuration / f"fold_{fold}" / "validation"
            write_image(prediction, GEOMETRY, folder / f"{case}.nii.gz")
            np.savez_compressed(folder / f"{case}.npz", probabilities=_one_hot(prediction, confidence))
    return work


def test_find_best_scores_configurations_and_ensembles(tmp_path: Path) -> None:
    work = _work_folder(tmp_path)
    recipe = find_best(WorkFolder(work), ["good", "shifted"], [0, 1], workers=1).to_json()
    scores = {candidate["name"]: candidate["foreground_dice"] for candidate in recipe["candidates"]}
    truth_voxels = int(_truth(0).sum())
    # A 3-voxel shift of a 7-voxel-wide box keeps 4/7 of it: Dice 4/7.
    assert abs(scores["shifted"] - 4 / 7) < 1e-6
    assert scores["good"] == 1.0 and truth_voxels > 0
    # The confident model outvotes the unsure one wherever they disagree: the ensemble is perfect too, and the tie
    # goes to the simpler single configuration.
    assert scores["good+shifted"] == 1.0
    assert recipe["selected"] == "good" and recipe["models"] == [{"configuration": "good", "folds": [0, 1]}]
    assert read_json(work / "inference.json") == recipe
    decision = read_json(work / "postprocessing.json")
    assert decision["keep_largest_foreground"] in (True, False)
    # Every cross-validation case is present once, with the input's geometry.
    crossval = sorted(p.name for p in (work / "models" / "shifted" / "crossval").glob("*.nii.gz"))
    assert crossval == [f"case_{i}.nii.gz" for i in range(6)]
    ensemble_case = read_image(work / "ensembles" / "good+shifted" / "crossval" / "case_4.nii.gz")
    assert ensemble_case.geometry == GEOMETRY
    assert np.array_equal(ensemble_case.array, _truth(4))
