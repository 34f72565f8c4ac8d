"""Experiment tracking: what TensorBoard and MLflow hold after training is what the training log says, per epoch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from optional import require_module
from test_selection import _work_folder as selection_work_folder
from test_training import TINY_CONFIGURATION, TINY_DATASET, quiet, tiny_job, tiny_settings, write_tiny_work_folder

from autoseg.cli import main as cli_main
from autoseg.pipeline.selection import find_best
from autoseg.records.training_log import read_log
from autoseg.records.work_folder import WorkFolder
from autoseg.training.distributed import DistributedContext
from autoseg.training.loop import train_fold
from autoseg.training.tracking import fold_tracker, numeric_fields
from autoseg.utils.files import read_json

# Short runs: the point is what is logged, not what is learned.
QUICK = {"epochs": 3, "iterations_per_epoch": 2, "validation_iterations": 1}


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    write_tiny_work_folder(tmp_path, number_of_cases=6)
    return tmp_path


@pytest.fixture
def mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI from the caller's shell, and MLFLOW_ALLOW_FILE_STORE unset as for a user, restored afterwards
    (set-then-delete makes monkeypatch remember to remove whatever the code under test sets)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` as TensorBoard reads the folder (purged steps already discarded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def tensorboard_hparams(folder: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment} in {tracking_uri}"
    return client.search_runs([found.experiment_id])


def mlflow_history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    """``{step: value}`` keeping, where a step was logged twice (epochs redone after a resume), the later value."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key)
    return {metric.step: metric.value for metric in sorted(history, key=lambda metric: metric.timestamp)}


def expected_per_epoch(log: list[dict]) -> dict[str, dict[int, float]]:
    expected: dict[str, dict[int, float]] = {}
    for record in log:
        for name, value in numeric_fields(record).items():
            expected.setdefault(name, {})[record["epoch"]] = value
    return expected


def test_tensorboard_holds_every_numeric_field_of_every_epoch_and_the_parameters(work_dir: Path) -> None:
    require_module("tensorboard", extra="tensorboard")
    job = tiny_job(work_dir)
    result = train_fold(job, tiny_settings(**QUICK, loggers=("tensorboard",)), log_message=quiet)
    log = read_log(job.fold_folder / "log.jsonl")
    expected = expected_per_epoch(log)
    assert {"train_loss", "val_loss", "pseudo_dice/sphere", "pseudo_dice/cube", "ema_pseudo_dice",
            "learning_rate", "epoch_seconds"} <= set(expected)

    scalars = tensorboard_scalars(job.fold_folder / "tensorboard")
    for name, per_epoch in expected.items():
        assert scalars[name] == pytest.approx(per_epoch, rel=1e-6), name  # event files store float32
    assert scalars["final/epochs_completed"] == {3: 3.0} and result.epochs_completed == 3
    parameters = tensorboard_hparams(job.fold_folder / "tensorboard")
    assert parameters["patch_size"] == "[16,16,16]" and parameters["configuration"] == "3d_fullres"
    assert parameters["batch_size"] == TINY_CONFIGURATION["batch_size"] and parameters["epochs"] == 3
    assert parameters["seed"] == 0 and parameters["precision"] == result_precision(job.fold_folder)


def result_precision(fold_folder: Path) -> str:
    """The precision the run resolved ``auto`` to, as its final checkpoint records it."""
    import torch

    checkpoint = torch.load(fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    return checkpoint["settings"]["precision"]


def test_mlflow_run_of_a_fold_holds_the_training_log_per_epoch_and_the_parameters(
    work_dir: Path, mlflow_environment: None
) -> None:
    require_module("mlflow", extra="mlflow")
    job = tiny_job(work_dir)
    train_fold(job, tiny_settings(**QUICK, loggers=("mlflow",)), log_message=quiet)
    tracking_uri = (work_dir / TINY_DATASET / "mlruns").as_uri()
    assert (work_dir / TINY_DATASET / "mlruns").is_dir()

    (run,) = mlflow_runs(tracking_uri, TINY_DATASET)
    assert run.info.status == "FINISHED" and run.info.run_name == "3d_fullres fold 0"
    assert read_json(job.fold_folder / "mlflow_run.json")["run_id"] == run.info.run_id
    for name, per_epoch in expected_per_epoch(read_log(job.fold_folder / "log.jsonl")).items():
        assert mlflow_history(tracking_uri, run.info.run_id, name) == per_epoch, name
    parameters = run.data.params
    assert parameters["patch_size"] == "[16,16,16]" and parameters["spacing"] == "[1.0,1.0,1.0]"
    assert parameters["plans_name"] == "tiny" and parameters["configuration"] == "3d_fullres"
    assert parameters["batch_size"] == "2" and parameters["epochs"] == "3" and parameters["seed"] == "0"
    assert {"precision", "optimizer_name", "autoseg_version", "torch_version"} <= set(parameters)
    assert "time_budget_seconds" not in parameters  # unset options are left out, not recorded as None
    assert run.data.metrics["final/epochs_completed"] == 3


class InterruptAfterEpoch:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, state) -> None:
        if state.progress.epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_resumed_fold_continues_its_mlflow_run_and_reads_back_as_its_training_log(
    work_dir: Path, mlflow_environment: None
) -> None:
    require_module("tensorboard", extra="tensorboard")
    require_module("mlflow", extra="mlflow")
    job = tiny_job(work_dir)
    both = ("tensorboard", "mlflow")
    # The latest checkpoint is written at epoch 2; epoch 2 is logged, then lost with the interrupted run.
    settings = tiny_settings(**{**QUICK, "epochs": 4}, checkpoint_every_epochs=2, loggers=both)
    with pytest.raises(KeyboardInterrupt):
        train_fold(job, settings, epoch_end_callbacks=[InterruptAfterEpoch(3)], log_message=quiet)
    tracking_uri = (work_dir / TINY_DATASET / "mlruns").as_uri()
    (interrupted,) = mlflow_runs(tracking_uri, TINY_DATASET)
    assert interrupted.info.status == "KILLED"
    assert set(mlflow_history(tracking_uri, interrupted.info.run_id, "train_loss")) == {0, 1, 2}

    result = train_fold(job, tiny_settings(**{**QUICK, "epochs": 4}, resume=True, loggers=both), log_message=quiet)
    assert result.resumed_from_epoch == 2
    log = read_log(job.fold_folder / "log.jsonl")
    assert [record["epoch"] for record in log] == [0, 1, 2, 3]
    (resumed,) = mlflow_runs(tracking_uri, TINY_DATASET)
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    # MLflow cannot delete values: the lost epoch 2 stays, and the redone one is logged after it.
    raw = MlflowClient(tracking_uri=tracking_uri).get_metric_history(resumed.info.run_id, "train_loss")
    assert sorted(metric.step for metric in raw) == [0, 1, 2, 2, 3]
    scalars = tensorboard_scalars(job.fold_folder / "tensorboard")
    for name, per_epoch in expected_per_epoch(log).items():
        assert mlflow_history(tracking_uri, resumed.info.run_id, name) == per_epoch, name
        assert scalars[name] == pytest.approx(per_epoch, rel=1e-6), name


def test_train_command_logs_where_mlflow_tracking_uri_points(
    work_dir: Path, tmp_path: Path, mlflow_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("tensorboard", extra="tensorboard")
    require_module("mlflow", extra="mlflow")
    elsewhere = (tmp_path / "team_store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a user pointing at a file store opts in themselves
    arguments = ["train", TINY_DATASET, "3d_fullres", "1", "--work-dir", str(work_dir), "--epochs", "1",
                 "--iterations-per-epoch", "1", "--validation-iterations", "1", "--num-workers", "0", "--device",
                 "cpu", "--no-validation-prediction", "--threads", "1", "--logger", "mlflow", "--logger", "tensorboard"]
    assert cli_main(arguments) == 0
    fold_folder = work_dir / TINY_DATASET / "models" / "3d_fullres" / "fold_1"
    assert set(tensorboard_scalars(fold_folder / "tensorboard")["train_loss"]) == {0}
    (run,) = mlflow_runs(elsewhere, TINY_DATASET)
    assert run.data.params["fold"] == "1" and "train_loss" in run.data.metrics
    assert not (work_dir / TINY_DATASET / "mlruns").exists()


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_asking_for_a_logger_whose_package_is_missing_names_the_extra_to_install(
    logger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, logger, None)  # what importlib reports for a package that is not installed
    code = cli_main(["train", "Dataset123_Any", "3d_fullres", "0", "--work-dir", str(tmp_path), "--logger", logger])
    assert code == 2
    assert f'pip install "autoseg[{logger}]"' in capsys.readouterr().err


def test_only_rank_0_tracks_under_torchrun(work_dir: Path, mlflow_environment: None) -> None:
    job = tiny_job(work_dir)
    settings = tiny_settings(loggers=("tensorboard", "mlflow"))
    with fold_tracker(job, settings, DistributedContext(world_size=2, rank=1, local_rank=1), "cpu") as tracker:
        assert tracker.runs == []
        tracker.log_epoch({"epoch": 0, "train_loss": 1.0}, 0)
    assert not (work_dir / TINY_DATASET / "mlruns").exists() and not (job.fold_folder / "tensorboard").exists()


def test_run_sends_the_selected_candidate_and_its_cross_validation_dice_to_mlflow_and_tensorboard(
    tmp_path: Path, mlflow_environment: None
) -> None:
    require_module("tensorboard", extra="tensorboard")
    require_module("mlflow", extra="mlflow")
    from autoseg.training.tracking import log_cross_validation

    work = selection_work_folder(tmp_path)
    recipe = find_best(WorkFolder(work), ["good", "shifted"], [0, 1], workers=1)
    log_cross_validation(WorkFolder(work), recipe, ("mlflow", "tensorboard"))

    (run,) = mlflow_runs((work / "mlruns").as_uri(), work.name)
    assert run.info.run_name == "cross_validation" and run.info.status == "FINISHED"
    assert run.data.params["selected"] == "good" and run.data.params["folds"] == "[0,1]"
    assert run.data.metrics["cross_validation_dice"] == recipe.cross_validation_dice == 1.0
    assert run.data.metrics["dice/organ"] == 1.0
    assert run.data.metrics["candidates/shifted"] == pytest.approx(4 / 7)
    assert run.data.metrics["candidates/good_shifted"] == 1.0  # "+" is not allowed in MLflow names
    scalars = tensorboard_scalars(work / "tensorboard" / "cross_validation")
    assert scalars["cross_validation_dice"] == {0: 1.0} and scalars["candidates/shifted"][0] == pytest.approx(4 / 7)
