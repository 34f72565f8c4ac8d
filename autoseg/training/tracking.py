"""Optional experiment tracking (``--logger tensorboard``, ``--logger mlflow``): parameters and per-epoch numbers.

A :class:`Tracker` sends one run's parameters (``start``), every numeric field of each epoch's log record
(``log_epoch``, step = epoch) and closing numbers (``log_final``) to the requested backends:

- TensorBoard: event files in ``models/CONFIG/fold_K/tensorboard/`` (``torch.utils.tensorboard``), with the
  parameters as hparams and as a text table. A resumed run opens its writer with ``purge_step`` = its first epoch,
  so TensorBoard discards what the interrupted run logged after its last checkpoint.
- MLflow: one run per fold in an experiment named after the dataset's working folder, in
  ``WORK/<dataset>/mlruns`` (a ``file:`` store) unless ``MLFLOW_TRACKING_URI`` is set. The run id is kept in
  ``fold_K/mlflow_run.json`` so that ``--resume`` continues the same run. MLflow has no way to delete logged
  values: epochs redone after a resume appear twice at their step, and the later (by timestamp) is the kept one.

The backends are imported only when asked for, so ``import autoseg`` never needs them; only rank 0 tracks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoseg.errors import UserError
from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.mlflow_run import MLFLOW_RUN_FILE, MlflowRun
from autoseg.records.plans import load_plans
from autoseg.records.training_summary import TrainingSummary
from autoseg.records.work_folder import WorkFolder
from autoseg.training.distributed import DistributedContext
from autoseg.training.job import TrainingJob, TrainingSettings, TrainingState

if TYPE_CHECKING:
    import torch

LOGGERS = ("tensorboard", "mlflow")
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_FOLDER = "mlruns"
CROSS_VALIDATION_RUN = "cross_validation"
# The module each logger needs, and the extra of setup.cfg that installs it.
_REQUIRED_MODULE = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
# Settings that describe how the run was executed, not what was learned: not worth a parameter.
_UNTRACKED_SETTINGS = {
    "after_training_hooks", "checkpoint_every_epochs", "checkpoint_every_seconds", "device", "loggers", "num_workers",
    "resume", "show_progress_bar", "threads",
}  # the device is recorded as resolved ("cuda:0"), not as asked for (None = best available)


def add_logger_argument(parser: argparse.ArgumentParser) -> None:
    """``--logger NAME`` (repeatable) for the commands that train."""
    parser.add_argument(
        "--logger", action="append", choices=LOGGERS, default=None, dest="logger",
        help="also send parameters and per-epoch metrics to TensorBoard (fold_K/tensorboard/) or MLflow "
        "(WORK/<dataset>/mlruns, or MLFLOW_TRACKING_URI); repeat for both (default: neither)",
    )


def requested_loggers(names: Iterable[str] | None) -> tuple[str, ...]:
    """The requested loggers once each, in order, after checking that their packages are installed.

    Checked before training starts (on every torchrun rank), so a missing extra costs no training time.

    Raises:
        UserError: a logger is unknown or its package is not installed.
    """
    loggers = tuple(dict.fromkeys(names or ()))
    for name in loggers:
        if name not in _REQUIRED_MODULE:
            raise UserError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}.")
        if importlib.util.find_spec(_REQUIRED_MODULE[name]) is None:
            raise UserError(f'--logger {name} needs the {name} package: pip install "autoseg[{name}]".')
    return loggers


def numeric_fields(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of ``record`` (nested dicts flattened as ``outer/inner``), booleans and ``epoch`` left out.

    >>> numeric_fields({"epoch": 3, "train_loss": 0.5, "pseudo_dice": {"a": 0.25, "b": None}, "note": "x"})
    {'train_loss': 0.5, 'pseudo_dice/a': 0.25}
    """
    numbers: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            numbers.update(numeric_fields(value, prefix=f"{name}/"))
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name != "epoch" and is_number and math.isfinite(value):
            numbers[name] = float(value)
    return numbers


def _parameter_text(value: Any) -> str | int | float | bool:
    """Parameters as both backends accept them: scalars as they are, lists and the like as compact JSON."""
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def training_parameters(
    job: TrainingJob, settings: TrainingSettings, *, device: torch.device | str, world_size: int = 1
) -> dict[str, str | int | float | bool]:
    """What defines a fold's run: plan, configuration (patch, batch, spacing, network), recipe, versions."""
    import dataclasses

    import torch

    import autoseg

    configuration = job.configuration
    plans_file = job.work_folder.plans
    parameters: dict[str, Any] = {
        "dataset": job.work_folder.root.name,
        "plans_name": load_plans(plans_file).get("plans_name") if plans_file.is_file() else None,
        "configuration": job.configuration_name,
        "fold": str(job.fold),
        "training_cases": len(job.train_case_ids),
        "validation_cases": len(job.validation_case_ids),
        "patch_size": list(configuration.patch_size),
        "spacing": list(configuration.spacing),
        "planned_batch_size": configuration.batch_size,
        "architecture": configuration.network.architecture,
        "previous_stage": configuration.previous_stage,
        "device": str(device),
        "processes": world_size,
        "autoseg_version": autoseg.__version__,
        "torch_version": torch.__version__,
    }
    for name, value in dataclasses.asdict(settings).items():
        if name not in _UNTRACKED_SETTINGS:
            parameters[name] = value
    if settings.time_budget_seconds is not None:
        parameters.pop("epochs")  # ignored under a time budget; recording 1000 would mislead
    return {name: _parameter_text(value) for name, value in parameters.items() if value is not None}


def fold_result_metrics(result: TrainingSummary) -> dict[str, float]:
    """The closing numbers of a fold, under ``final/`` (apart from the per-epoch curves): epochs, time, best EMA
    pseudo-Dice and the Dice of the validation cases predicted after training."""
    validation = result.after_training.get("predict_validation") or {}
    return numeric_fields({"final": {
        "epochs_completed": result.epochs_completed,
        "elapsed_seconds": result.elapsed_seconds,
        "best_ema_pseudo_dice": result.best_ema_pseudo_dice,
        "validation_mean_dice": validation.get("mean_dice"),
        "validation_dice": validation.get("dice") or {},
    }})


def cross_validation_metrics(recipe: InferenceRecipe) -> dict[str, float]:
    """From model selection's ``inference.json``: the selected candidate's mean foreground Dice (before and after
    post-processing), its Dice per class, and every candidate's mean foreground Dice."""
    selected = next(candidate for candidate in recipe.candidates if candidate.name == recipe.selected)
    return numeric_fields({
        "cross_validation_dice": recipe.cross_validation_dice,
        "cross_validation_dice_after_postprocessing": recipe.cross_validation_dice_after_postprocessing,
        "dice": selected.dice_per_class or {},
        "candidates": {candidate.name: candidate.foreground_dice for candidate in recipe.candidates},
    })


class _TensorBoardRun:
    """One event-file folder; the writer opens at the first value, with ``purge_step`` at that value's step."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parameters: dict[str, Any] = {}
        self.writer = None

    def start(self, parameters: Mapping[str, Any]) -> None:
        self.parameters = dict(parameters)

    def location(self) -> str:
        return f"TensorBoard event files in {self.folder}"

    def _writer(self, first_step: int) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=first_step)
            if self.parameters:
                # Written into this run (SummaryWriter.add_hparams would make a separate sub-run); the metrics named
                # here are the scalar tags the HParams dashboard shows next to the parameters.
                watched = {"ema_pseudo_dice": 0.0, "val_loss": 0.0, "final/validation_mean_dice": 0.0}
                for summary in hparams(self.parameters, watched):
                    self.writer.file_writer.add_summary(summary)
                table = "\n".join(["| parameter | value |", "|---|---|"]
                                  + [f"| {name} | {value} |" for name, value in self.parameters.items()])
                self.writer.add_text("parameters", table, global_step=first_step)
        return self.writer

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        writer = self._writer(step)
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step=step)
        writer.flush()  # epochs are minutes apart: make each visible at once

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def _mlflow_name(name: str) -> str:
    """MLflow allows letters, digits and ``_-. /:`` in metric and parameter names (e.g. not ``+`` of ensembles)."""
    return re.sub(r"[^\w\-. /:]", "_", name)


def default_mlflow_uri(work_folder: WorkFolder) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a ``file:`` store in ``WORK/<dataset>/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (work_folder.root / MLFLOW_FOLDER).resolve().as_uri()


class _MlflowRun:
    """One MLflow run through ``MlflowClient`` (no global active run, so runs of several folds never mix)."""

    def __init__(self, *, tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str],
                 run_file: Path | None, resume: bool) -> None:
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags, self.run_file, self.resume = dict(tags), run_file, resume
        self.client = None
        self.run_id: str | None = None

    def start(self, parameters: Mapping[str, Any]) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("file:"):
            # Recent MLflow (3.17 here) refuses its file store ("maintenance mode") unless this is set; sqlite instead
            # needs SQLAlchemy and Alembic, which mlflow-skinny does not install. The file store works offline.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = self._reusable_run_id() if self.resume else None
            logged: dict[str, str] = {}
            if self.run_id is None:
                run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=self.tags)
                self.run_id = run.info.run_id
                if self.run_file is not None:
                    MlflowRun(self.tracking_uri, self.run_id).write(self.run_file)
            else:
                self.client.update_run(self.run_id, status="RUNNING")
                logged = self.client.get_run(self.run_id).data.params
            values = {_mlflow_name(name): str(value) for name, value in parameters.items()}
            # MLflow refuses to change a logged parameter: a resume that changed one (e.g. more epochs) says so in
            # a tag instead.
            new = [Param(name, value) for name, value in values.items() if name not in logged]
            changed = [RunTag(f"resumed_with.{name}", value) for name, value in values.items()
                       if name in logged and logged[name] != value]
            self.client.log_batch(self.run_id, params=new, tags=changed)
        except MlflowException as error:
            raise UserError(
                f"MLflow could not record to {self.tracking_uri} ({error.message.splitlines()[0]}); fix or unset "
                "MLFLOW_TRACKING_URI."
            ) from error

    def location(self) -> str:
        return f"MLflow run {self.run_id} (experiment {self.experiment}) in {self.tracking_uri}"

    def _reusable_run_id(self) -> str | None:
        """The fold's earlier run, if it was recorded to this tracking URI and still exists."""
        from mlflow.exceptions import MlflowException

        if self.run_file is None or not self.run_file.is_file():
            return None
        stored = MlflowRun.read(self.run_file)
        if stored.tracking_uri != self.tracking_uri:
            return None
        try:
            run = self.client.get_run(stored.run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:
            # Another fold's process created it in the meantime.
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(_mlflow_name(name), value, timestamp, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """Parameters and numbers of one run, sent to each requested backend; without backends every call does nothing.

    Use as a context manager: leaving it closes the run as FINISHED, FAILED, or KILLED (Ctrl-C). A backend that
    fails after the start (a tracking server gone away) is reported once and dropped: tracking never ends a training.
    """

    def __init__(
        self, runs: Sequence[_TensorBoardRun | _MlflowRun] = (), *, say: Callable[[str], None] = print
    ) -> None:
        self.runs = list(runs)
        self.say = say

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if error_type is None:
            self.close()
        else:
            self.close("KILLED" if issubclass(error_type, KeyboardInterrupt) else "FAILED")

    def start(self, parameters: Mapping[str, Any]) -> None:
        for run in self.runs:
            run.start(parameters)
            self.say(f"tracking: {run.location()}")

    def _send(self, metrics: Mapping[str, float], step: int) -> None:
        for run in list(self.runs):
            try:
                run.log_metrics(metrics, step)
            except Exception as error:
                self.say(f"experiment tracking ({type(run).__name__.strip('_')}) failed and is switched off: {error}")
                self.runs.remove(run)

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        """Every numeric field of the epoch's log record (nested ones as ``pseudo_dice/CLASS``), at step ``epoch``."""
        if self.runs:
            self._send(numeric_fields(record), epoch)

    def log_latest_epoch(self, state: TrainingState) -> None:
        """Epoch-end callback of the training loop: logs the record the epoch just appended."""
        if self.runs and state.log:
            self.log_epoch(state.log[-1], int(state.log[-1]["epoch"]))

    def log_final(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        if self.runs and metrics:
            self._send(metrics, step)

    def close(self, status: str = "FINISHED") -> None:
        for run in self.runs:
            try:
                run.close(status)
            except Exception as error:
                self.say(f"experiment tracking could not close its run: {error}")
        self.runs = []


def _runs(loggers: Sequence[str], *, tensorboard_folder: Path, work_folder: WorkFolder, run_name: str,
          tags: Mapping[str, str], mlflow_run_file: Path | None, resume: bool) -> list:
    runs: list[_TensorBoardRun | _MlflowRun] = []
    if "tensorboard" in loggers:
        runs.append(_TensorBoardRun(tensorboard_folder))
    if "mlflow" in loggers:
        runs.append(_MlflowRun(
            tracking_uri=default_mlflow_uri(work_folder), experiment=work_folder.root.name,
            run_name=run_name, tags=tags, run_file=mlflow_run_file, resume=resume,
        ))
    return runs


def fold_tracker(
    job: TrainingJob, settings: TrainingSettings, context: DistributedContext, device: torch.device | str,
    *, say: Callable[[str], None] = print,
) -> Tracker:
    """A started tracker for one fold's training (empty on ranks other than 0, or without ``settings.loggers``).

    With ``settings.resume`` and a checkpoint to resume from, the fold's earlier MLflow run is continued.
    """
    if not settings.loggers or not context.is_main_process:
        return Tracker()
    loggers = requested_loggers(settings.loggers)
    resumable = any((job.fold_folder / name).is_file()
                    for name in (checkpoint_files.LATEST_CHECKPOINT, checkpoint_files.FINAL_CHECKPOINT))
    tracker = Tracker(_runs(
        loggers,
        tensorboard_folder=job.fold_folder / TENSORBOARD_FOLDER,
        work_folder=job.work_folder,
        run_name=f"{job.configuration_name} fold {job.fold}",
        tags={"autoseg.kind": "fold", "autoseg.configuration": job.configuration_name, "autoseg.fold": str(job.fold)},
        mlflow_run_file=job.fold_folder / MLFLOW_RUN_FILE,
        resume=settings.resume and resumable,
    ), say=say)
    tracker.start(training_parameters(job, settings, device=device, world_size=context.world_size))
    return tracker


def log_cross_validation(work_folder: WorkFolder, recipe: InferenceRecipe, loggers: Sequence[str]) -> None:
    """``autoseg run``'s final numbers (see :func:`cross_validation_metrics`) as a run of their own: an MLflow run
    named ``cross_validation`` in the dataset's experiment, TensorBoard scalars in ``WORK/<dataset>/tensorboard/``."""
    if not loggers:
        return
    folds = recipe.all_folds
    with Tracker(_runs(
        requested_loggers(loggers),
        tensorboard_folder=work_folder.root / TENSORBOARD_FOLDER / CROSS_VALIDATION_RUN,
        work_folder=work_folder,
        run_name=CROSS_VALIDATION_RUN,
        tags={"autoseg.kind": CROSS_VALIDATION_RUN},
        mlflow_run_file=None,
        resume=False,
    )) as tracker:
        tracker.start({
            "selected": recipe.selected,
            "ensemble": recipe.ensemble,
            "folds": _parameter_text(folds),
            "candidates": _parameter_text([candidate.name for candidate in recipe.candidates]),
        })
        tracker.log_final(cross_validation_metrics(recipe))


__all__ = [
    "LOGGERS",
    "Tracker",
    "add_logger_argument",
    "cross_validation_metrics",
    "fold_result_metrics",
    "fold_tracker",
    "log_cross_validation",
    "numeric_fields",
    "requested_loggers",
    "training_parameters",
]
