"""``autoseg train DATASET CONFIG FOLD``: train one fold of one configuration from the preprocessed data.

Reads ``WORK/<dataset>/{dataset.json, plans.json, preprocessed/CONFIG/}``, makes or reads ``splits.json`` and writes
``models/CONFIG/fold_K/``. The same command under ``torchrun --nproc_per_node N`` trains with
DistributedDataParallel (see docs/training.md).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from autoseg.commands.arguments import add_work_dir_argument
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import UserError
from autoseg.pipeline.validation import training_components
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.training.augmentation import AUGMENTATION_PRESETS
from autoseg.training.distributed import DistributedContext, detect_distributed_context
from autoseg.training.job import TrainingJob, TrainingSettings, build_job, describe_recipe, with_recipe
from autoseg.training.loop import train_fold
from autoseg.training.optimizers import DEFAULT_INITIAL_LEARNING_RATE, DEFAULT_MOMENTUM, OPTIMIZERS
from autoseg.training.schedule import SCHEDULES, epoch_seconds_for_budget
from autoseg.training.splits import CASE_GROUPERS
from autoseg.training.tracking import add_logger_argument, requested_loggers
from autoseg.utils.durations import parse_time_budget
from autoseg.utils.files import remove_stale_temporaries
from autoseg.utils.locking import folder_lock
from autoseg.utils.precision import add_precision_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (or its name inside the working folder)")
    parser.add_argument("configuration", help="configuration name from plans.json, e.g. 3d_fullres or 2d")
    parser.add_argument("fold", help="cross-validation fold 0-4 (a fold index of --splits) or 'all'")
    add_work_dir_argument(parser)
    parser.add_argument(
        "--epochs", type=int, default=1000, help="epochs to train (default 1000; ignored with --time-budget)"
    )
    parser.add_argument(
        "--iterations-per-epoch", type=int, default=None,
        help="training steps per epoch (default 250; with --time-budget an epoch is instead 1/20 of the budget)",
    )
    parser.add_argument(
        "--validation-iterations", type=int, default=50, help="validation batches per epoch (default 50)"
    )
    parser.add_argument(
        "--time-budget",
        default=None,
        help="train until this much wall-clock time is spent (e.g. 90s, 20m, 2h); the learning rate decays over it",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    add_precision_argument(parser)
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="patches per step (default: the plan's; on CPU at most ~1.2 M voxels per step, at least 2)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the fold's latest checkpoint")
    parser.add_argument("--pretrained", default=None, help="checkpoint to initialise from (matching tensors only)")
    parser.add_argument("--loss", default="dice_ce", help="loss name (default dice_ce; see docs/training.md)")
    parser.add_argument(
        "--num-workers", type=int, default=None,
        help="background augmentation processes (default: none on CPU, where each batch is augmented between steps; "
             "one per CPU, at most 8, on a GPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: every available CPU, shared among torchrun ranks; 1 can be faster on busy cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for initialisation and sampling")
    parser.add_argument("--splits", default=None, help="JSON file of folds to use instead of the automatic ones")
    parser.add_argument(
        "--group-cases",
        choices=sorted(CASE_GROUPERS),
        default="none",
        help="keep related cases in one fold when splits are made; 'leading-number' groups NNN_* ids "
        "(e.g. HC18 scans of one fetus)",
    )
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels and seeds (slower)")
    parser.add_argument("--no-validation-prediction", action="store_true",
                        help="skip predicting the validation cases after training")
    add_logger_argument(parser)
    add_recipe_arguments(parser)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the training recipe (default: the reference's; see docs/training.md "Recipe")."""
    recipe = parser.add_argument_group("training recipe (default: the reference's, see docs/training.md)")
    recipe.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                        help="optimiser (default sgd_nesterov)")
    recipe.add_argument("--learning-rate", type=float, default=None,
                        help=f"peak learning rate (default {DEFAULT_INITIAL_LEARNING_RATE:g})")
    recipe.add_argument("--momentum", type=float, default=None, help=f"SGD momentum (default {DEFAULT_MOMENTUM:g})")
    recipe.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                        help="learning-rate decay to zero over the epochs or the time budget (default poly)")
    recipe.add_argument("--warmup", type=float, default=None,
                        help="share of training spent warming the learning rate up linearly (default 0)")
    recipe.add_argument("--weight-averaging", type=float, default=None, metavar="DECAY",
                        help="keep an exponential moving average of the weights with this decay per step (e.g. "
                             "0.999) and validate and save it (default: off)")
    recipe.add_argument("--augmentation", choices=list(AUGMENTATION_PRESETS), default=None,
                        help="augmentation strength (default reference)")
    recipe.add_argument("--reference-recipe", action="store_true",
                        help="ignore the short-schedule recipe a time-budgeted plan chose (plans.json compute record)")


def recipe_from_arguments(args: argparse.Namespace) -> dict:
    """The ``TrainingSettings`` fields the recipe options set (those given only)."""
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise UserError("--learning-rate must be positive.")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise UserError("--momentum must be in [0, 1).")
    if args.warmup is not None and not 0 <= args.warmup < 1:
        raise UserError("--warmup must be in [0, 1).")
    if args.weight_averaging is not None and not 0 < args.weight_averaging < 1:
        raise UserError("--weight-averaging must be in (0, 1), e.g. 0.999.")
    given = {
        "optimizer_name": args.optimizer,
        "initial_learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "schedule": args.schedule,
        "warmup_fraction": args.warmup,
        "weight_averaging_decay": args.weight_averaging,
        "augmentation": args.augmentation,
    }
    return {name: value for name, value in given.items() if value is not None}


def settings_from_arguments(args: argparse.Namespace) -> TrainingSettings:
    for name in ("epochs", "iterations_per_epoch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1.")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1.")
    if args.validation_iterations < 0:
        raise UserError("--validation-iterations must not be negative.")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UserError(f"pretrained checkpoint {args.pretrained} does not exist.")
    budget = parse_time_budget(args.time_budget) if args.time_budget else None
    return TrainingSettings(
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch or TrainingSettings.iterations_per_epoch,
        validation_iterations=args.validation_iterations,
        time_budget_seconds=budget,
        epoch_seconds=epoch_seconds_for_budget(budget) if budget and args.iterations_per_epoch is None else None,
        loss_name=args.loss,
        seed=args.seed,
        deterministic=args.deterministic,
        num_workers=args.num_workers,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        resume=args.resume,
        pretrained=args.pretrained,
        after_training_hooks=() if args.no_validation_prediction else ("predict_validation",),
        loggers=requested_loggers(args.logger),
        **recipe_from_arguments(args),
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_arguments(args)
    context = detect_distributed_context()
    # Folds of one dataset may train at once (one per GPU), so the working folder is locked shared and only the
    # fold folder exclusively. Every torchrun rank shares the working folder; only rank 0 writes the fold folder,
    # so only rank 0 locks it (the other ranks would otherwise be refused by rank 0's lock).
    work_folder = WorkFolder.for_dataset(args.work_dir, args.dataset)
    with folder_lock(work_folder, shared=True, create=False):
        job = build_job(
            work_folder,
            args.configuration,
            args.fold,
            raw_dataset=_raw_dataset_if_given(args.dataset, work_folder),
            splits_file=args.splits,
            group_cases=args.group_cases,
            write_splits=context.is_main_process,
        )
        with folder_lock(job.fold_folder) if context.is_main_process else contextlib.nullcontext():
            if context.is_main_process:  # the fold is ours alone: what a killed run was writing is garbage
                remove_stale_temporaries(job.fold_folder, recursive=True)
            return _train(job, _with_planned_recipe(settings, work_folder, args), context)


def _with_planned_recipe(
    settings: TrainingSettings, work_folder: WorkFolder, args: argparse.Namespace
) -> TrainingSettings:
    """The recipe a time-budgeted plan chose for this configuration, under the options given on the command line."""
    planned = {} if args.reference_recipe else load_plans(work_folder.plans).training_recipe(args.configuration)
    planned = {name: value for name, value in planned.items() if name not in recipe_from_arguments(args)}
    if not planned:
        return settings
    if detect_distributed_context().is_main_process:
        print(f"training recipe for a short schedule (plans.json compute record; --reference-recipe to ignore): "
              f"{describe_recipe(planned)}")
    return with_recipe(settings, planned, source=str(work_folder.plans))


def _raw_dataset_if_given(dataset: str, work_folder: WorkFolder) -> RawDataset | None:
    """The raw dataset folder as it is now, when the argument names one (it may also name the working folder)."""
    folder = Path(dataset)
    if (folder / "dataset.json").is_file() and folder.resolve() != work_folder.root.resolve():
        return load_raw_dataset(folder)
    return None


def _train(job: TrainingJob, settings: TrainingSettings, context: DistributedContext) -> int:
    if context.is_main_process:
        print(
            f"training {job.configuration_name} fold {job.fold}: {len(job.train_case_ids)} training and "
            f"{len(job.validation_case_ids)} validation cases -> {job.fold_folder}"
        )
    result = train_fold(job, settings, components=training_components())
    if context.is_main_process:
        best = "-" if result.best_ema_pseudo_dice is None else f"{result.best_ema_pseudo_dice:.4f}"
        print(f"done: {result.epochs_completed} epochs, best EMA pseudo-Dice {best}, checkpoints in {job.fold_folder}")
    return 0
