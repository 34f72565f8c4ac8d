"""Training: splits, schedule, checkpoints that resume, time budgets, determinism, transfer learning, the CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import as_configuration

from autoseg.cli import main as cli_main
from autoseg.errors import UserError
from autoseg.io import case_arrays
from autoseg.networks import build_network
from autoseg.pipeline.validation import predict_validation_cases, training_components
from autoseg.preprocessing.storage import write_preprocessed_case
from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.preprocessed_case import PreprocessedCase, preprocessed_case_ids
from autoseg.records.training_log import read_log
from autoseg.records.training_summary import TrainingSummary
from autoseg.records.work_folder import WorkFolder
from autoseg.training.job import TrainingSettings, build_job, default_components
from autoseg.training.loop import train_fold
from autoseg.training.pretrained import load_pretrained_weights
from autoseg.training.pseudo_dice import count_overlaps, dice_from_counts
from autoseg.training.schedule import TrainingProgress, poly_learning_rate
from autoseg.training.splits import group_by_leading_number, load_or_create_splits, make_splits
from autoseg.training.validation_pass import validation_batches
from autoseg.utils.durations import parse_time_budget
from autoseg.utils.files import write_json

TINY_DATASET = "Dataset900_TinySpheres"
TINY_CONFIGURATION = {
    "dimension": 3,
    "spacing": [1.0, 1.0, 1.0],
    "median_shape": [20, 20, 20],
    "patch_size": [16, 16, 16],
    "batch_size": 2,
    "network": {
        "architecture": "plain_unet",
        "features_per_stage": [4, 8, 16],
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "blocks_per_stage_encoder": [1, 1, 1],
        "convs_per_stage_decoder": [1, 1],
    },
    "normalization": [{"scheme": "zscore", "use_mask": False}],
    "batch_dice": False,
}


def write_tiny_work_folder(work_dir: Path, *, number_of_cases: int = 10, seed: int = 0) -> Path:
    """A working folder as preprocessing leaves it (docs/design.md): dataset.json, plans.json and preprocessed
    cases of a 2-class problem (a bright sphere = class 1, a dark cube = class 2) in 20^3 volumes."""
    rng = np.random.RandomState(seed)
    folder = work_dir / TINY_DATASET
    preprocessed = folder / "preprocessed" / "3d_fullres"
    preprocessed.mkdir(parents=True)
    cases = []
    z, y, x = np.mgrid[:20, :20, :20]
    for index in range(number_of_cases):
        identifier = f"tiny_{index:03d}"
        labels = np.zeros((20, 20, 20), dtype=np.int8)
        centre = rng.randint(6, 14, size=3)
        labels[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 16] = 1
        corner = rng.randint(0, 14, size=3)
        cube = (slice(corner[0], corner[0] + 5), slice(corner[1], corner[1] + 5), slice(corner[2], corner[2] + 5))
        labels[cube][labels[cube] == 0] = 2
        image = (labels == 1) * 2.0 - (labels == 2) * 1.5 + rng.normal(0, 0.5, labels.shape)
        np.save(preprocessed / f"{identifier}.npy", image[None].astype(np.float32))
        np.save(preprocessed / f"{identifier}_seg.npy", labels[None])
        locations = {str(c): np.argwhere(labels == c)[:100].tolist() for c in (1, 2)}
        write_json(
            preprocessed / f"{identifier}.json",
            {"identifier": identifier, "shape_after_resampling": [20, 20, 20], "class_locations": locations},
        )
        cases.append(Case(identifier, (f"/nonexistent/{identifier}_0000.nii.gz",), f"/nonexistent/{identifier}.nii.gz"))
    dataset = RawDataset(
        root=f"/nonexistent/{TINY_DATASET}",
        name=TINY_DATASET,
        channel_names=("MRI",),
        labels={"background": 0, "sphere": 1, "cube": 2},
        file_ending=".nii.gz",
        num_training=number_of_cases,
        training_cases=tuple(cases),
    )
    write_json(folder / "dataset.json", dataset.to_dict())
    write_json(
        folder / "plans.json",
        {
            "dataset_name": TINY_DATASET,
            "plans_name": "tiny",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": TINY_CONFIGURATION},
        },
    )
    return folder


def tiny_job(work_dir: Path, fold: str = "0"):
    return build_job(WorkFolder.for_dataset(work_dir, TINY_DATASET), "3d_fullres", fold)


def tiny_settings(**overrides) -> TrainingSettings:
    options = {
        "epochs": 2,
        "iterations_per_epoch": 4,
        "validation_iterations": 2,
        "num_workers": 0,
        "threads": 1,  # tiny networks gain nothing from a second thread on a shared machine
        "device": "cpu",
        "after_training_hooks": (),
        "show_progress_bar": False,
        "checkpoint_every_epochs": 1,
    }
    options.update(overrides)
    return TrainingSettings(**options)


def quiet(_message: str) -> None:
    pass


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    write_tiny_work_folder(tmp_path)
    return tmp_path


# --- splits ---------------------------------------------------------------------------------------------------


def test_splits_are_deterministic_disjoint_and_independent_of_listing_order() -> None:
    identifiers = [f"case_{i:03d}" for i in range(23)]
    first = make_splits(identifiers)
    assert first == make_splits(list(reversed(identifiers)))
    assert len(first) == 5
    validation_sets = [set(fold["val"]) for fold in first]
    assert sorted(i for fold in first for i in fold["val"]) == identifiers  # every case validated exactly once
    for fold, validation in zip(first, validation_sets, strict=True):
        assert not validation & set(fold["train"])
        assert set(fold["train"]) | validation == set(identifiers)
    assert make_splits(identifiers, seed=1) != first


def test_grouped_splits_keep_every_fetus_in_one_fold(hc18_root: Path) -> None:
    ending = ".nii.gz"
    real = [p.name[: -len(ending)] for p in (hc18_root / "labelsTr").glob(f"*{ending}")]
    assert len(real) == 300
    # The shared subset holds one scan per fetus, so grouping by the leading number must not change its folds.
    assert make_splits(real, grouper=group_by_leading_number) == make_splits(real)
    # The full challenge names repeated scans NNN_HC, NNN_2HC, NNN_3HC: they must share a fold.
    identifiers = real + [f"{i.split('_')[0]}_{k}HC" for i in real[::3] for k in (2, 3)]
    splits = make_splits(identifiers, grouper=group_by_leading_number)
    assert sorted(i for fold in splits for i in fold["val"]) == sorted(identifiers)
    for fold in splits:
        train_groups = {group_by_leading_number(i) for i in fold["train"]}
        validation_groups = {group_by_leading_number(i) for i in fold["val"]}
        assert not train_groups & validation_groups
    leaked = [
        fold for fold in make_splits(identifiers)
        if {group_by_leading_number(i) for i in fold["train"]} & {group_by_leading_number(i) for i in fold["val"]}
    ]
    assert leaked, "without grouping the same fetus lands on both sides, which is what grouping prevents"


def test_user_splits_file_is_honoured_and_checked(tmp_path: Path) -> None:
    identifiers = [f"c{i}" for i in range(6)]
    custom = [
        {"train": ["c0", "c1", "c2", "c3"], "val": ["c4", "c5"]},
        {"train": ["c2", "c3", "c4", "c5"], "val": ["c0"]},
    ]
    user_file = tmp_path / "my_splits.json"
    user_file.write_text(json.dumps(custom))
    saved = tmp_path / "work" / "splits.json"
    assert load_or_create_splits(saved, identifiers, user_splits_file=user_file) == custom
    assert json.loads(saved.read_text()) == custom  # later stages see the same folds
    assert load_or_create_splits(saved, identifiers) == custom  # and reruns keep them
    user_file.write_text(json.dumps([{"train": ["c0", "ghost"], "val": ["c1"]}]))
    with pytest.raises(UserError, match="ghost"):
        load_or_create_splits(tmp_path / "other.json", identifiers, user_splits_file=user_file)


# --- schedule and small parts ---------------------------------------------------------------------------------


def test_time_budgets_parse_and_stretch_the_learning_rate_schedule() -> None:
    assert parse_time_budget("90s") == 90
    assert parse_time_budget("20m") == 1200
    assert parse_time_budget("2h") == 7200
    assert parse_time_budget("1.5h") == 5400
    with pytest.raises(UserError, match="20 minutes"):
        parse_time_budget("20 minutes")
    progress = TrainingProgress(epochs=None, iterations_per_epoch=10, time_budget_seconds=100, elapsed_seconds=50)
    assert progress.fraction_done == pytest.approx(0.5)
    assert poly_learning_rate(1e-2, progress.fraction_done) == pytest.approx(1e-2 * 0.5**0.9)
    assert not progress.finished
    progress.elapsed_seconds = 100.0
    assert progress.finished and poly_learning_rate(1e-2, progress.fraction_done) == 0.0


def test_pseudo_dice_counts_match_a_hand_computed_example() -> None:
    target = torch.tensor([[[0, 1, 1, 2, 3]]])  # 3 = ignore label
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0, 2, 1]]), 3).permute(0, 2, 1).float()
    counts = count_overlaps(logits, target, ignore_label=3)
    assert counts.tolist() == [[1, 0, 1], [1, 0, 0]]  # class 1: TP 1, FN 1 (the ignored voxel is not an FP)
    assert dice_from_counts(counts) == [pytest.approx(2 / 3), 1.0]


# --- training runs on the tiny dataset ----------------------------------------------------------------------------


def test_a_few_epochs_reduce_the_loss_and_write_every_artifact(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    result = train_fold(job, tiny_settings(epochs=3, iterations_per_epoch=4),
                        log_message=quiet)
    log = read_log(job.fold_folder / "log.jsonl")
    assert [record["epoch"] for record in log] == list(range(3))
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"]
    assert set(log[0]["pseudo_dice"]) == {"sphere", "cube"}
    assert log[-1]["learning_rate"] < log[0]["learning_rate"]
    assert result.epochs_completed == 3
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"):
        checkpoint = torch.load(job.fold_folder / name, map_location="cpu", weights_only=True)
        assert checkpoint["format"] == checkpoint_files.CHECKPOINT_FORMAT
    final = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    fresh = build_network(as_configuration(TINY_CONFIGURATION), in_channels=1, out_channels=3)
    fresh.load_state_dict(final["network"])  # strict: every tensor present with the right shape
    assert final["progress"]["epoch"] == 3 and len(final["log"]) == 3
    assert (job.fold_folder / "progress.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((job.fold_folder / "training_summary.json").read_text())["epochs_completed"] == 3


class InterruptAfterEpoch:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, state) -> None:
        if state.progress.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_continues_an_interrupted_run_at_the_right_epoch_with_its_optimizer_state(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    with pytest.raises(KeyboardInterrupt):
        train_fold(job, tiny_settings(epochs=4),
                   epoch_end_callbacks=[InterruptAfterEpoch(2)], log_message=quiet)
    assert not (job.fold_folder / "checkpoint_final.pt").exists()
    latest = torch.load(job.fold_folder / "checkpoint_latest.pt", map_location="cpu", weights_only=True)
    assert latest["progress"]["epoch"] == 2

    # Resuming with the planned epochs already reached restores the state and changes nothing.
    restored = train_fold(job, tiny_settings(epochs=2, resume=True), log_message=quiet)
    assert restored.resumed_from_epoch == 2 and restored.iterations_done == latest["progress"]["iterations_done"]
    final = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert final["optimizer"]["param_groups"] == latest["optimizer"]["param_groups"]
    for key, saved in latest["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][key]["momentum_buffer"], saved["momentum_buffer"])
    for name, tensor in latest["network"].items():
        assert torch.equal(final["network"][name], tensor)

    messages: list[str] = []
    resumed = train_fold(job, tiny_settings(epochs=4, resume=True),
                         log_message=messages.append)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_completed == 4
    assert any("resumed from" in message and "epoch 2" in message for message in messages)
    assert [record["epoch"] for record in read_log(job.fold_folder / "log.jsonl")] == [0, 1, 2, 3]
    assert resumed.iterations_done == 4 * 4


class LoaderKilledAfter:
    """A training loader that dies (like a kill -9 of the run) when asked for batch number ``limit + 1``."""

    def __init__(self, make_loader, limit: int) -> None:
        self.make_loader, self.limit = make_loader, limit

    def __call__(self, *args, **kwargs):
        loader = self.make_loader(*args, **kwargs)
        for count, batch in enumerate(loader):
            if count == self.limit:
                loader.shutdown()
                raise KeyboardInterrupt
            yield batch


def test_a_slow_epoch_is_checkpointed_mid_way_and_resumed_at_the_same_iteration(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    dying_loader = LoaderKilledAfter(default_components().make_training_loader, 6)
    dying = dataclasses.replace(default_components(), make_training_loader=dying_loader)
    settings = tiny_settings(epochs=2, iterations_per_epoch=4, checkpoint_every_seconds=0.0)
    with pytest.raises(KeyboardInterrupt):
        train_fold(job, settings, components=dying, log_message=quiet)
    latest = torch.load(job.fold_folder / "checkpoint_latest.pt", map_location="cpu", weights_only=True)
    assert latest["progress"]["epoch"] == 1 and latest["progress"]["iteration_in_epoch"] == 2
    assert latest["progress"]["iterations_done"] == 6
    result = train_fold(job, dataclasses.replace(settings, resume=True), log_message=quiet)
    assert result.iterations_done == 8 and result.epochs_completed == 2
    assert [record["iterations"] for record in read_log(job.fold_folder / "log.jsonl")] == [4, 2]


def test_time_budget_stops_on_time_with_the_learning_rate_annealed(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    started = time.monotonic()
    result = train_fold(job, tiny_settings(epochs=10_000, iterations_per_epoch=3, time_budget_seconds=4.0),
                        log_message=quiet)
    wall = time.monotonic() - started
    assert 4.0 <= result.elapsed_seconds < 4.0 + 3.0
    assert wall < 4.0 + 15.0  # set-up and one validation pass of slack, on a busy shared machine
    log = read_log(job.fold_folder / "log.jsonl")
    assert len(log) >= 2
    assert log[-1]["learning_rate"] < 0.25 * log[0]["learning_rate"]


def test_a_time_budget_is_split_into_short_epochs_each_validated_in_proportion(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    settings = tiny_settings(iterations_per_epoch=250, validation_iterations=50, time_budget_seconds=6.0,
                             epoch_seconds=1.5)
    result = train_fold(job, settings, log_message=quiet)
    log = read_log(job.fold_folder / "log.jsonl")
    assert 3 <= len(log) <= 5  # about budget / epoch_seconds epochs, not one 250-iteration epoch
    assert all(0 < record["iterations"] < 250 for record in log)
    assert sum(record["iterations"] for record in log) == result.iterations_done
    # 20 steps of a nominal 250 validate with 50 * 20 / 250 = 4 batches; validation never exceeds the setting.
    assert validation_batches(settings, 20) == 4
    assert validation_batches(settings, 1) == 1
    assert validation_batches(dataclasses.replace(settings, epoch_seconds=None), 20) == 50


def test_train_command_slices_epochs_only_when_the_epoch_length_is_not_given() -> None:
    import argparse

    from autoseg.commands.train import add_arguments, settings_from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    budget_only = settings_from_arguments(parser.parse_args(["D", "3d_fullres", "0", "--time-budget", "20m"]))
    assert (budget_only.iterations_per_epoch, budget_only.epoch_seconds) == (250, 60.0)
    explicit = settings_from_arguments(parser.parse_args(
        ["D", "3d_fullres", "0", "--time-budget", "20m", "--iterations-per-epoch", "20"]))
    assert (explicit.iterations_per_epoch, explicit.epoch_seconds) == (20, None)
    assert settings_from_arguments(parser.parse_args(["D", "2d", "0"])).epoch_seconds is None


def test_deterministic_runs_give_identical_losses(tmp_path: Path) -> None:
    losses = []
    for attempt in range(2):
        work = tmp_path / f"run{attempt}"
        write_tiny_work_folder(work)
        job = tiny_job(work)
        train_fold(job, tiny_settings(epochs=2, iterations_per_epoch=3, deterministic=True, seed=7),
                   log_message=quiet)
        losses.append([(r["train_loss"], r["val_loss"]) for r in read_log(job.fold_folder / "log.jsonl")])
    assert losses[0] == losses[1]


def test_training_on_compressed_cases_gives_the_same_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A case stored compressed (here: every case, the threshold lowered to 1 byte) is read losslessly, patch by
    patch, so a same-seed run gives the same losses, to the last bit, as on the memory-mapped ``.npy`` cases."""
    losses = []
    for compressed in (False, True):
        work = tmp_path / f"compressed_{compressed}"
        folder = write_tiny_work_folder(work, number_of_cases=6) / "preprocessed" / "3d_fullres"
        if compressed:
            monkeypatch.setattr(case_arrays, "COMPRESS_FROM_BYTES", 1)
            for case in (PreprocessedCase.at(folder, identifier) for identifier in preprocessed_case_ids(folder)):
                image, labels = np.load(case.image_path), np.load(case.segmentation_path)
                write_preprocessed_case(folder, case.identifier, image, labels, case.read_properties(),
                                        patch_size=[8, 8, 8])
            assert not list(folder.glob("*.npy")) and len(list(folder.glob("*.b2nd"))) == 12
        job = tiny_job(work)
        train_fold(job, tiny_settings(epochs=2, iterations_per_epoch=3, deterministic=True, seed=7),
                   log_message=quiet)
        losses.append([(r["train_loss"], r["val_loss"]) for r in read_log(job.fold_folder / "log.jsonl")])
    assert losses[0] == losses[1]


def test_pretrained_weights_load_where_shapes_match_and_the_rest_is_reported(tmp_path: Path) -> None:
    build = build_network
    source = build(as_configuration(TINY_CONFIGURATION), in_channels=1, out_channels=3)
    checkpoint = tmp_path / "source.pt"
    checkpoint_files.save_checkpoint(checkpoint, {"network": source.state_dict()})
    target = build(as_configuration(TINY_CONFIGURATION), in_channels=2, out_channels=5)  # other channels and classes
    report = load_pretrained_weights(target, checkpoint)
    source_weights, target_weights = source.state_dict(), target.state_dict()
    assert report.loaded and report.shape_mismatch and len(report.adapted_input_channels) == 1
    for name in report.loaded:
        assert torch.equal(target_weights[name], source_weights[name])
    for name in report.shape_mismatch:  # the output heads: 5 classes instead of 3
        assert target_weights[name].shape[0] == 5 and source_weights[name].shape[0] == 3
    (first_convolution,) = report.adapted_input_channels
    adapted, original = target_weights[first_convolution], source_weights[first_convolution]
    assert torch.equal(adapted[:, :1], original) and torch.allclose(adapted[:, 1:], original.mean(1, keepdim=True))
    assert set(report.loaded) | set(report.shape_mismatch) | {first_convolution} == set(target_weights)
    assert "kept fresh (shape differs)" in report.summary()


# --- the command line -----------------------------------------------------------------------------------------


def test_train_command_without_plans_names_the_missing_file_and_exits_2(tmp_path: Path, capsys) -> None:
    code = cli_main(["train", "Dataset123_Missing", "3d_fullres", "0", "--work-dir", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "dataset.json" in error and "autoseg preprocess" in error


def test_train_command_trains_a_fold_and_resumes(work_dir: Path, capsys) -> None:
    arguments = ["train", TINY_DATASET, "3d_fullres", "1", "--work-dir", str(work_dir), "--epochs", "2",
                 "--iterations-per-epoch", "3", "--validation-iterations", "1", "--num-workers", "0",
                 "--device", "cpu", "--no-validation-prediction", "--threads", "1"]
    assert cli_main(arguments) == 0
    output = capsys.readouterr().out
    assert "parameters" in output and "fold 1" in output
    fold_folder = work_dir / TINY_DATASET / "models" / "3d_fullres" / "fold_1"
    assert (fold_folder / "checkpoint_final.pt").is_file()
    splits = json.loads((work_dir / TINY_DATASET / "splits.json").read_text())
    assert len(splits) == 5
    arguments[arguments.index("--epochs") + 1] = "3"
    assert cli_main([*arguments, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert len(read_log(fold_folder / "log.jsonl")) == 3


def test_settings_record_is_json_serialisable() -> None:
    assert json.dumps(dataclasses.asdict(tiny_settings()))


@pytest.mark.slow  # 30-80 s on the shared 2-core machine: plan, preprocess, train and predict real cases
def test_training_real_hippocampus_cases_ends_with_scored_validation_predictions_in_input_geometry(
    hippocampus_root: Path, copy_cases, tmp_path: Path
) -> None:
    import SimpleITK as sitk

    raw = copy_cases(hippocampus_root, 10)
    work = tmp_path / "work"
    assert cli_main(["plan", str(raw), "--work-dir", str(work)]) == 0
    assert cli_main(["preprocess", str(raw), "-c", "3d_fullres", "--work-dir", str(work), "--workers", "1"]) == 0
    plans_path = work / raw.name / "plans.json"
    plans = json.loads(plans_path.read_text())
    network = plans["configurations"]["3d_fullres"]["network"]
    network["features_per_stage"] = [4 * 2**i for i in range(len(network["features_per_stage"]))]  # fast on CPU
    write_json(plans_path, plans)
    arguments = ["train", str(raw), "3d_fullres", "0", "--work-dir", str(work), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--validation-iterations", "1", "--num-workers", "0"]
    assert cli_main(arguments) == 0
    fold_folder = work / raw.name / "models" / "3d_fullres" / "fold_0"
    validation_ids = json.loads((work / raw.name / "splits.json").read_text())[0]["val"]
    assert len(validation_ids) == 2
    for identifier in validation_ids:
        prediction = sitk.ReadImage(str(fold_folder / "validation" / f"{identifier}.nii.gz"))
        reference = sitk.ReadImage(str(raw / "labelsTr" / f"{identifier}.nii.gz"))
        assert prediction.GetSize() == reference.GetSize()
        assert prediction.GetSpacing() == reference.GetSpacing()
        assert prediction.GetOrigin() == reference.GetOrigin()
        assert prediction.GetDirection() == reference.GetDirection()
        assert (fold_folder / "validation" / f"{identifier}.npz").is_file()  # probabilities for model selection
    summary = json.loads((fold_folder / "training_summary.json").read_text())["after_training"]["predict_validation"]
    assert 0.0 <= summary["mean_dice"] <= 1.0 and set(summary["dice"]) == {"anterior", "posterior"}
    assert summary["test_time_mirroring"] is True
    assert (fold_folder / "validation" / "summary.json").is_file()
    # Without mirroring (a budgeted run on large cases): one pass per tile, so other probabilities, and it says so.
    mirrored = np.load(fold_folder / "validation" / f"{validation_ids[0]}.npz")["probabilities"]
    plain = predict_validation_cases(fold_folder, work_folder=WorkFolder.for_dataset(work, raw), fold=0,
                                     configuration_name="3d_fullres", validation_case_ids=validation_ids,
                                     device="cpu", mirroring=False, progress=False)
    assert plain["test_time_mirroring"] is False
    unmirrored = np.load(fold_folder / "validation" / f"{validation_ids[0]}.npz")["probabilities"]
    assert unmirrored.shape == mirrored.shape and not np.allclose(unmirrored, mirrored)


def test_a_failing_after_training_hook_is_reported_without_failing_the_training(
    work_dir: Path, monkeypatch
) -> None:
    def broken_predictor(fold_folder, **context):
        raise RuntimeError("predictor exploded")

    components = dataclasses.replace(
        training_components(), after_training_hooks={"predict_validation": broken_predictor}
    )
    messages: list[str] = []
    result = train_fold(tiny_job(work_dir), tiny_settings(epochs=1, iterations_per_epoch=1,
                                                          after_training_hooks=("predict_validation",)),
                        components=components, log_message=messages.append)
    assert result.after_training == {"predict_validation": {"failed": "RuntimeError: predictor exploded"}}
    assert any("predict_validation failed" in message for message in messages)
    assert (Path(result.fold_folder) / "checkpoint_final.pt").is_file()


def test_validation_is_predicted_with_the_mirroring_the_settings_ask_for_and_says_so(work_dir: Path) -> None:
    seen: list[bool] = []

    def recording_predictor(fold_folder, *, mirroring, **context):
        seen.append(mirroring)
        return {"mean_dice": 0.5, "test_time_mirroring": mirroring}

    components = dataclasses.replace(
        training_components(), after_training_hooks={"predict_validation": recording_predictor}
    )
    messages: list[str] = []
    settings = tiny_settings(epochs=1, iterations_per_epoch=1, after_training_hooks=("predict_validation",),
                             validation_mirroring=False)
    train_fold(tiny_job(work_dir), settings, components=components, log_message=messages.append)
    assert seen == [False]
    assert "validation cases (predict_validation): mean Dice 0.5000 (without test-time mirroring)" in messages
    assert TrainingSettings().validation_mirroring  # the reference's validation mirrors


def test_the_training_summary_is_read_back_as_written_and_an_older_file_without_some_keys_still_reads(
    tmp_path: Path,
) -> None:
    summary = TrainingSummary(
        fold_folder=str(tmp_path), configuration_name="3d_fullres", fold=0, epochs_completed=2, iterations_done=10,
        elapsed_seconds=3.5, final_train_loss=1.2, final_val_loss=1.1, ema_pseudo_dice=0.4, best_ema_pseudo_dice=0.5,
        resumed_from_epoch=None, after_training={"predict_validation": {"mean_dice": 0.6}},
    )
    summary.write(tmp_path)
    written = json.loads((tmp_path / "training_summary.json").read_text())
    assert list(written) == [field.name for field in dataclasses.fields(TrainingSummary)]
    assert TrainingSummary.read(tmp_path / "training_summary.json") == summary
    write_json(tmp_path / "older.json", {"epochs_completed": 3, "elapsed_seconds": 60.0})
    older = TrainingSummary.read(tmp_path / "older.json")
    assert (older.epochs_completed, older.best_ema_pseudo_dice, older.after_training) == (3, None, {})
