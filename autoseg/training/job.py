"""What one ``autoseg train`` is: the job (which fold of which configuration), its settings, the parts the loop is
composed of, the state the loop mutates and the result it returns; ``build_job`` locates and checks a job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from autoseg.errors import UserError
from autoseg.networks import build_network, describe
from autoseg.records.case_signatures import require_unchanged_since_planning
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration, load_plans
from autoseg.records.preprocessed_case import preprocessed_case_ids
from autoseg.records.work_folder import WorkFolder
from autoseg.training.data_loading import deep_supervision_scales, make_training_loader, make_validation_loader
from autoseg.training.distributed import DistributedContext
from autoseg.training.hooks import AfterTrainingHook
from autoseg.training.losses import build_loss
from autoseg.training.optimizers import (
    DEFAULT_GRADIENT_CLIP_NORM,
    DEFAULT_INITIAL_LEARNING_RATE,
    DEFAULT_MOMENTUM,
    DEFAULT_WEIGHT_DECAY,
)
from autoseg.training.schedule import TrainingProgress
from autoseg.training.splits import CASE_GROUPERS, DEFAULT_SPLIT_SEED, cases_for_fold, load_or_create_splits

FOLD_CHOICES = ("0", "1", "2", "3", "4", "all")


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Every option of a training run; the defaults are the proven recipe (see docs/training.md).

    ``epochs`` is ignored when ``time_budget_seconds`` is set: training then runs until the budget is spent, with the
    learning rate decaying over the budget. A latest checkpoint is written every ``checkpoint_every_epochs`` epochs
    and whenever ``checkpoint_every_seconds`` have passed since the last one. ``precision`` is resolved by
    ``autoseg.utils.precision`` (``auto``: float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32).
    ``batch_size`` None means the plan's, capped on CPU by ``training_batch_size``. With ``epoch_seconds`` an epoch
    also ends after that much time (time-sliced epochs, see ``epoch_seconds_for_budget``), and its validation uses
    ``validation_iterations`` scaled by the share of ``iterations_per_epoch`` it ran.

    The recipe: ``optimizer_name`` with ``momentum`` (SGD's), ``initial_learning_rate`` decaying to zero by
    ``schedule`` (``autoseg.training.schedule.SCHEDULES``) after a linear warm-up over ``warmup_fraction`` of the
    training; ``weight_averaging_decay`` (None: off) keeps an EMA of the weights that validation and the saved model
    use (``autoseg.training.weight_averaging``); ``augmentation`` names a preset of
    ``autoseg.training.augmentation.AUGMENTATION_PRESETS``.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int = 50
    time_budget_seconds: float | None = None
    epoch_seconds: float | None = None
    loss_name: str = "dice_ce"
    optimizer_name: str = "sgd_nesterov"
    initial_learning_rate: float = DEFAULT_INITIAL_LEARNING_RATE
    momentum: float = DEFAULT_MOMENTUM
    schedule: str = "poly"
    warmup_fraction: float = 0.0
    weight_averaging_decay: float | None = None
    augmentation: str = "reference"
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    gradient_clip_norm: float = DEFAULT_GRADIENT_CLIP_NORM
    oversample_foreground: float = 0.33
    seed: int = 0
    deterministic: bool = False
    num_workers: int | None = None
    threads: int | None = None
    device: str | None = None
    precision: str = "auto"
    batch_size: int | None = None
    resume: bool = False
    pretrained: str | None = None
    checkpoint_every_epochs: int = 10
    checkpoint_every_seconds: float = 300.0
    after_training_hooks: tuple[str, ...] = ("predict_validation",)
    # Validation prediction with test-time mirroring (the reference's); a budgeted run on large cases turns it off
    # when prediction will be recommended without it (``autoseg.pipeline.run``).
    validation_mirroring: bool = True
    show_progress_bar: bool = True
    loggers: tuple[str, ...] = ()  # experiment tracking: "tensorboard", "mlflow" (autoseg.training.tracking)


RECIPE_FIELDS = ("optimizer_name", "initial_learning_rate", "momentum", "schedule", "warmup_fraction",
                 "weight_averaging_decay", "augmentation")


def with_recipe(
    settings: TrainingSettings, recipe: Mapping[str, Any], *, source: str = "plans.json"
) -> TrainingSettings:
    """``settings`` with a plan's recipe (``RECIPE_FIELDS`` -> value) applied; any other key is a ``UserError``
    naming ``source``."""
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
    if unknown:
        raise UserError(f"{source}: unknown training recipe setting(s) {', '.join(unknown)}; known: "
                        f"{', '.join(RECIPE_FIELDS)}.")
    return dataclasses.replace(settings, **recipe)


def describe_recipe(recipe: Mapping[str, Any]) -> str:
    """``{"augmentation": "light"}`` -> ``"augmentation light"`` (for one line of a command's output)."""
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in recipe.items())


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """What to train: one configuration of one dataset on one fold's cases, written to ``fold_folder``."""

    dataset: RawDataset
    work_folder: WorkFolder
    configuration_name: str
    configuration: Configuration
    fold: int | str
    train_case_ids: tuple[str, ...]
    validation_case_ids: tuple[str, ...]
    preprocessed_folder: Path
    fold_folder: Path
    # Cascade stages only: the previous stage's out-of-fold label maps (see autoseg.training.cascade), made from
    # the previous stage's folds as listed in ``splits`` before training starts.
    previous_stage_folder: Path | None = None
    splits: tuple[dict, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainingComponents:
    """The parts the loop is composed of, as plain functions (the real ones by default; tests may swap them)."""

    build_network: Callable[..., torch.nn.Module]
    describe_network: Callable[[torch.nn.Module], str]
    build_loss: Callable[..., Callable]
    make_training_loader: Callable[..., Iterator[dict]]
    make_validation_loader: Callable[..., Iterator[dict]]
    deep_supervision_scales: Callable[[Configuration], list]
    # Supplied by the pipeline above training (``autoseg.pipeline.validation.training_components``): making a cascade
    # stage's previous-stage inputs, and what runs after training (e.g. ``predict_validation``), need inference.
    prepare_previous_stage: Callable[..., Path] | None = None
    after_training_hooks: Mapping[str, AfterTrainingHook] = dataclasses.field(default_factory=dict)


def default_components() -> TrainingComponents:
    """The networks, losses and loaders of ``autoseg.networks`` and ``autoseg.training``."""

    return TrainingComponents(
        build_network=build_network,
        describe_network=describe,
        build_loss=build_loss,
        make_training_loader=make_training_loader,
        make_validation_loader=make_validation_loader,
        deep_supervision_scales=deep_supervision_scales,
    )


@dataclasses.dataclass
class TrainingState:
    """What the loop mutates; handed to epoch-end callbacks (e.g. to stop early or to inspect the weights)."""

    network: torch.nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    gradient_scaler: torch.amp.GradScaler
    progress: TrainingProgress
    log: list[dict[str, Any]]
    context: DistributedContext
    ema_pseudo_dice: float | None = None
    best_ema_pseudo_dice: float | None = None
    # The EMA of the weights (``settings.weight_averaging_decay``), which validation and the saved model use.
    averaged_network: AveragedModel | None = None

    @property
    def model_to_evaluate(self) -> torch.nn.Module:
        """The weights validation and prediction use: the weight average when there is one, else the network."""
        return self.averaged_network.module if self.averaged_network is not None else self.network


EpochCallback = Callable[[TrainingState], None]


def build_job(
    work_folder: WorkFolder,
    configuration_name: str,
    fold: int | str,
    *,
    raw_dataset: RawDataset | None = None,
    dataset: RawDataset | None = None,
    splits_file: str | None = None,
    group_cases: str = "none",
    write_splits: bool = True,
) -> TrainingJob:
    """Locate everything training needs and check it exists, naming the command that makes what is missing.

    ``raw_dataset``, the raw folder as it is now, is compared with what was planned (changed cases are an error);
    ``dataset`` saves re-reading the working folder's ``dataset.json`` when the caller holds it already.
    """
    fold = str(fold)
    if fold not in FOLD_CHOICES and not (splits_file and fold.isdigit()):
        raise UserError(f"fold {fold!r} is not one of {', '.join(FOLD_CHOICES)}.")
    name = raw_dataset.root if raw_dataset is not None else work_folder.root.name
    dataset = dataset or _planned_dataset(work_folder, name)
    if raw_dataset is not None:
        require_unchanged_since_planning(
            work_folder, raw_dataset,
            how_to_proceed=f"run `autoseg plan {name}` and `autoseg preprocess {name}` again first.",
        )
    plans = load_plans(work_folder.plans)
    configuration = plans.configuration(configuration_name)
    preprocessed_folder = _preprocessed_folder(work_folder.preprocessed(plans.data_configuration(configuration_name)),
                                               configuration_name, name)
    case_ids = sorted(case.identifier for case in dataset.training_cases) or preprocessed_case_ids(preprocessed_folder)
    splits = load_or_create_splits(
        work_folder.splits, case_ids, user_splits_file=splits_file, seed=DEFAULT_SPLIT_SEED,
        grouper=CASE_GROUPERS[group_cases], write=write_splits,
    )
    train_ids, validation_ids = cases_for_fold(splits, fold, case_ids)
    _require_preprocessed(preprocessed_folder, train_ids + validation_ids, fold, configuration_name, name)
    return TrainingJob(
        dataset=dataset, work_folder=work_folder, configuration_name=configuration_name, configuration=configuration,
        fold=fold if fold == "all" else int(fold), train_case_ids=tuple(train_ids),
        validation_case_ids=tuple(validation_ids), preprocessed_folder=preprocessed_folder,
        fold_folder=work_folder.fold(configuration_name, fold),
        previous_stage_folder=(
            work_folder.next_stage(configuration.previous_stage, configuration_name)
            if configuration.previous_stage else None
        ),
        splits=tuple(splits),
    )


def _planned_dataset(work_folder: WorkFolder, name: str) -> RawDataset:
    for path in (work_folder.dataset_json, work_folder.plans):
        if not path.is_file():
            raise UserError(
                f"{path} does not exist; run `autoseg plan {name}` and `autoseg preprocess {name}` "
                "(with the same --work-dir) first."
            )
    return work_folder.read_dataset()


def _preprocessed_folder(folder: Path, configuration_name: str, name: str) -> Path:
    """A cascade stage trains on its parent's preprocessed data (plus the previous stage's predictions)."""
    if not preprocessed_case_ids(folder):
        raise UserError(
            f"{folder} holds no preprocessed cases; run `autoseg preprocess {name} -c {configuration_name}` "
            "(with the same --work-dir) first."
        )
    return folder


def _require_preprocessed(folder: Path, case_ids: list[str], fold: str, configuration_name: str, name: str) -> None:
    missing = sorted(set(case_ids) - set(preprocessed_case_ids(folder)))
    if missing:
        raise UserError(
            f"{folder} lacks {len(missing)} case(s) of fold {fold} (e.g. {missing[0]}); "
            f"run `autoseg preprocess {name} -c {configuration_name}` again to complete it."
        )


__all__ = [
    "FOLD_CHOICES",
    "EpochCallback",
    "TrainingComponents",
    "TrainingJob",
    "TrainingSettings",
    "TrainingState",
    "build_job",
    "default_components",
]
