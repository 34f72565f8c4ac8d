"""Cascade training: out-of-fold previous-stage maps made as at inference, reused until the previous stage changes,
fed to the network as one-hot channels, and a cascade fold that trains and then predicts."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import as_configuration
from test_training import TINY_CONFIGURATION, TINY_DATASET, quiet, tiny_settings, write_tiny_work_folder

from autoseg.errors import UserError
from autoseg.inference.label_maps import one_hot_foreground, previous_stage_channels
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.next_stage import prepare_previous_stage_maps
from autoseg.inference.options import PredictionOptions
from autoseg.io.case_arrays import read_array, save_array
from autoseg.networks import build_network
from autoseg.pipeline.validation import training_components
from autoseg.preprocessing.storage import write_preprocessed_case
from autoseg.records.checkpoint import load_checkpoint, save_checkpoint
from autoseg.records.plans import Plans
from autoseg.records.preprocessed_case import PreprocessedCase, preprocessed_case_ids
from autoseg.records.training_log import read_log
from autoseg.records.work_folder import WorkFolder
from autoseg.training.cascade import PreviousStageToData
from autoseg.training.job import build_job
from autoseg.training.loop import train_fold
from autoseg.utils.files import read_json, write_json

LOWRES = {**TINY_CONFIGURATION, "spacing": [2.0, 2.0, 2.0], "median_shape": [10, 10, 10], "patch_size": [8, 8, 8],
          "network": {**TINY_CONFIGURATION["network"], "features_per_stage": [4, 8],
                      "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]],
                      "blocks_per_stage_encoder": [1, 1], "convs_per_stage_decoder": [1]}}


@pytest.fixture
def cascade_work(tmp_path: Path) -> Path:
    """The tiny work folder plus a 3d_lowres stage (preprocessed at half resolution, five randomly initialised
    folds) and a 3d_cascade_fullres stage on the 3d_fullres data."""
    return write_cascade_work(tmp_path)


def write_cascade_work(work: Path) -> Path:
    """What ``cascade_work`` makes, in ``work``."""
    folder = write_tiny_work_folder(work)
    plans = read_json(folder / "plans.json")
    plans["configurations"]["3d_lowres"] = LOWRES
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    write_json(folder / "plans.json", plans)
    lowres = folder / "preprocessed" / "3d_lowres"
    lowres.mkdir()
    for image_path in sorted((folder / "preprocessed" / "3d_fullres").glob("tiny_???.npy")):
        np.save(lowres / image_path.name, np.load(image_path)[:, ::2, ::2, ::2].copy())
    for fold in range(5):
        save_random_lowres_fold(folder, fold, seed=fold)
    return work


def save_random_lowres_fold(folder: Path, fold: int, *, seed: int) -> Path:
    torch.manual_seed(zlib.crc32(f"lowres/{seed}".encode()) % 1000)
    network = build_network(as_configuration(LOWRES), in_channels=1, out_channels=3)
    path = folder / "models" / "3d_lowres" / f"fold_{fold}" / "checkpoint_final.pt"
    save_checkpoint(path, {"network": network.state_dict(), "configuration": LOWRES,
                           "configuration_name": "3d_lowres"})
    return path


def cascade_job(work_dir: Path, fold: str = "0"):
    return build_job(
        WorkFolder.for_dataset(work_dir, TINY_DATASET), "3d_cascade_fullres", fold
    )


def test_previous_stage_to_data_appends_one_hot_channels_and_keeps_the_labels() -> None:
    data = np.zeros((2, 1, 4, 4, 4), dtype=np.float32)
    seg = np.zeros((2, 2, 4, 4, 4), dtype=np.float32)
    seg[:, 0, 0] = 1  # the labels
    seg[0, 1, 1] = 2  # the previous stage's map: class 2 in slice 1 of sample 0
    seg[1, 1, 2] = 1
    out = PreviousStageToData((1, 2))(data=data, seg=seg)
    assert out["data"].shape == (2, 3, 4, 4, 4) and out["seg"].shape == (2, 1, 4, 4, 4)
    assert out["data"][0, 2, 1].all() and not out["data"][0, 1].any()
    assert out["data"][1, 1, 2].all() and not out["data"][1, 2].any()
    assert (out["seg"] == seg[:, :1]).all()


def test_cascade_needs_every_fold_of_the_previous_stage(cascade_work: Path) -> None:
    folder = cascade_work / TINY_DATASET
    (folder / "models" / "3d_lowres" / "fold_3" / "checkpoint_final.pt").unlink()
    with pytest.raises(UserError, match=r"fold_3/checkpoint_final\.pt is missing.*train 3d_lowres on all 5 folds"):
        train_fold(cascade_job(cascade_work), tiny_settings(), components=training_components(), log_message=quiet)


def test_previous_stage_maps_are_out_of_fold_inference_outputs_and_reused_until_the_stage_changes(
    cascade_work: Path,
) -> None:
    job = cascade_job(cascade_work)
    folder = job.work_folder.root

    def prepare():
        return prepare_previous_stage_maps(
            work_folder=job.work_folder, configuration_name="3d_cascade_fullres", previous_stage="3d_lowres",
            splits=job.splits, target_folder=job.preprocessed_folder, device="cpu", say=quiet,
        )

    output = prepare()
    maps = sorted(output.glob("tiny_*.npy"))
    assert len(maps) == 10  # every case, each from the one fold that did not train on it
    # The same channels inference feeds the cascade: fold k's lowres model on the case's lowres data.
    identifier = job.splits[2]["val"][0]
    lowres = load_predictor(ModelSource.checkpoints(folder, configuration="3d_lowres", folds=[2]),
                            PredictionOptions(device="cpu"))
    probabilities = lowres.predict_preprocessed(np.load(folder / "preprocessed" / "3d_lowres" / f"{identifier}.npy"))
    expected = previous_stage_channels(probabilities, (20, 20, 20), dataset=lowres.dataset)
    stored = np.load(output / f"{identifier}.npy")
    assert stored.shape == (1, 20, 20, 20)
    assert torch.equal(one_hot_foreground(stored[0], foreground_labels=(1, 2)), expected)

    before = {path.name: path.stat().st_mtime_ns for path in maps}
    prepare()
    assert {path.name: path.stat().st_mtime_ns for path in maps} == before  # reused
    save_random_lowres_fold(folder, 2, seed=99)  # fold 2 retrained: only its validation cases are made again
    prepare()
    changed = {path.name for path in maps if path.stat().st_mtime_ns != before[path.name]}
    assert changed == {f"{case}.npy" for case in job.splits[2]["val"]}


def test_a_cascade_fold_trains_on_image_plus_previous_stage_channels_and_predicts(cascade_work: Path) -> None:
    job = cascade_job(cascade_work)
    result = train_fold(job, tiny_settings(epochs=1, iterations_per_epoch=3), components=training_components(),
                        log_message=quiet)
    assert result.iterations_done == 3
    final = load_checkpoint(job.fold_folder / "checkpoint_final.pt")
    assert final["in_channels"] == 1 + 2  # image + one-hot sphere and cube of the lowres stage
    predictor = load_predictor(ModelSource.checkpoints(job.work_folder, configuration="3d_cascade_fullres", folds=[0]),
                               PredictionOptions(device="cpu"))
    identifier = job.validation_case_ids[0]
    preprocessed = job.work_folder.preprocessed_root
    probabilities = predictor.predict_preprocessed(
        np.load(preprocessed / "3d_fullres" / f"{identifier}.npy"),
        previous_stage_data=np.load(preprocessed / "3d_lowres" / f"{identifier}.npy"),
    )
    assert probabilities.shape == (3, 20, 20, 20)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(20, 20, 20))


def test_run_trains_the_previous_stage_first_and_the_cascade_only_with_all_five_folds(capsys) -> None:
    from autoseg.pipeline.run import configurations_to_train

    tiny = TINY_CONFIGURATION
    plans = Plans.from_json({"configurations": {
        "2d": tiny, "3d_fullres": tiny,
        "3d_cascade_fullres": {**tiny, "previous_stage": "3d_lowres"}, "3d_lowres": tiny,  # the cascade listed first
    }})
    assert configurations_to_train(plans, None, (0, 1, 2, 3, 4)) == ["2d", "3d_fullres", "3d_lowres",
                                                                     "3d_cascade_fullres"]
    assert configurations_to_train(plans, None, (0, 1)) == ["2d", "3d_fullres"]
    assert "not training 3d_cascade_fullres, 3d_lowres" in capsys.readouterr().out
    assert configurations_to_train(plans, ["3d_cascade_fullres", "3d_lowres"], (0,)) == ["3d_lowres",
                                                                                        "3d_cascade_fullres"]
    with pytest.raises(UserError, match=r"'3d_midres' is not in plans\.json"):
        configurations_to_train(plans, ["3d_midres"], (0,))


def compress_every_case(work: Path) -> None:
    """Store the tiny work folder's 3d_fullres cases and 3d_lowres images compressed (``CASE.b2nd``), as a large
    case would be, removing the ``.npy`` files."""
    preprocessed = WorkFolder.for_dataset(work, TINY_DATASET).preprocessed_root
    for image_path in sorted((preprocessed / "3d_lowres").glob("*.npy")):
        save_array(np.load(image_path), image_path.with_suffix(".b2nd"), patch_size=[8, 8, 8])
        image_path.unlink()
    for case in (PreprocessedCase.at(preprocessed / "3d_fullres", name)
                 for name in preprocessed_case_ids(preprocessed / "3d_fullres")):
        write_preprocessed_case(case.folder, case.identifier, np.load(case.image_path),
                                np.load(case.segmentation_path), case.read_properties(), patch_size=[16, 16, 16],
                                compress_from_bytes=0)


def test_a_cascade_on_compressed_cases_makes_the_same_maps_and_losses(tmp_path: Path) -> None:
    results = []
    for compressed in (False, True):
        work = write_cascade_work(tmp_path / f"compressed_{compressed}")
        folder = WorkFolder.for_dataset(work, TINY_DATASET).root
        if compressed:
            compress_every_case(work)
        job = cascade_job(work)
        train_fold(job, tiny_settings(epochs=1, iterations_per_epoch=3, deterministic=True, seed=3),
                   components=training_components(), log_message=quiet)
        maps = folder / "models" / "3d_lowres" / "next_stage" / "3d_cascade_fullres"
        stored = {path.stem: read_array(path) for path in maps.glob("tiny_*.*")}
        assert len(stored) == 10 and {path.suffix for path in maps.glob("tiny_*.*")} == {
            ".b2nd" if compressed else ".npy"}
        losses = [(r["train_loss"], r["val_loss"]) for r in read_log(job.fold_folder / "log.jsonl")]
        results.append((stored, losses))
    (plain_maps, plain_losses), (packed_maps, packed_losses) = results
    assert plain_maps.keys() == packed_maps.keys()
    assert all(np.array_equal(plain_maps[name], packed_maps[name]) for name in plain_maps)
    assert plain_losses == packed_losses
