"""``autoseg run``: check, fingerprint, plan, preprocess, train each configuration x fold, select, post-process, report.

Every stage skips work whose outputs exist and are valid, so a killed run resumes where it stopped: the fingerprint
is reused while its inputs are unchanged, an existing ``plans.json`` is kept (it may be hand-edited), preprocessed
cases are skipped when complete, a fold that finished (``training_summary.json``) is skipped and an unfinished one
resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.errors import UserError
from autoseg.paths import add_work_dir_argument, dataset_work_dir
from autoseg.training.tracking import add_logger_argument, log_cross_validation, requested_loggers
from autoseg.utils.files import read_json
from autoseg.utils.memory import describe_largest_case
from autoseg.utils.precision import add_precision_argument

if TYPE_CHECKING:
    from autoseg.training.loop import TrainingSettings

DEFAULT_FOLDS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What ``autoseg run`` does; the defaults are the full automatic pipeline."""

    configurations: tuple[str, ...] | None = None
    folds: tuple[int, ...] = DEFAULT_FOLDS
    time_budget: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    validation_iterations: int | None = None
    gpu_memory_gb: float | None = None
    preset: str = "default"
    workers: int = 2
    device: str | None = None
    precision: str = "auto"
    group_cases: str = "none"
    replan: bool = False
    loggers: tuple[str, ...] = ()  # experiment tracking of every fold and of the final cross-validation
    progress: bool = True  # progress bars of every stage


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def plan_stage(dataset_root: Path, work: Path, options: RunOptions):
    from autoseg.planning.plan_dataset import plan_dataset
    from autoseg.planning.table import format_plans_table

    _stage("check + fingerprint + plan")
    dataset, plans, kept = plan_dataset(
        dataset_root, work, preset=options.preset, gpu_memory_gb=options.gpu_memory_gb, workers=options.workers,
        keep_existing_plans=not options.replan, progress=options.progress,
    )
    print(f"{dataset.name}: {len(dataset.training_cases)} training cases, no errors")
    if kept:
        print(f"keeping the existing {work / 'plans.json'} (use --replan to plan again)")
    print(format_plans_table(plans), end="")
    fingerprint_cases = read_json(work / "fingerprint.json").get("cases", {})
    memory = describe_largest_case(
        {name: case["shape"] for name, case in fingerprint_cases.items()}, channels=dataset.num_channels,
        classes=dataset.num_output_channels, workers=options.workers,
    )
    if memory:
        print(memory)
    return dataset, plans


def configurations_to_train(plans: dict, requested: Sequence[str] | None, folds: Sequence[int]) -> list[str]:
    """``requested`` (checked against the plan), else every planned configuration; a cascade's previous stage always
    comes before it.

    A cascade trains on out-of-fold segmentations of its previous stage, which need all five folds of that stage:
    when fewer folds are requested, the default leaves out the cascade and its low-resolution stage (which is of
    little use alone) and says so.
    """
    planned = list(plans["configurations"])
    if requested:
        unknown = [name for name in requested if name not in planned]
        if unknown:
            raise UserError(f"configuration {unknown[0]!r} is not in plans.json (planned: {', '.join(planned)}).")
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = planned
        cascades = [name for name in planned if plans["configurations"][name].get("previous_stage")]
        if cascades and set(DEFAULT_FOLDS) - set(folds):
            dropped = [*cascades, *(plans["configurations"][name]["previous_stage"] for name in cascades)]
            print(f"not training {', '.join(dict.fromkeys(dropped))}: the cascade learns from out-of-fold predictions "
                  "of all five folds of its previous stage; run with every fold to train it")
            chosen = [name for name in planned if name not in dropped]
    for name in list(chosen):
        previous = plans["configurations"][name].get("previous_stage")
        if previous and previous in chosen and chosen.index(previous) > chosen.index(name):
            chosen.remove(previous)
            chosen.insert(chosen.index(name), previous)
    return chosen


def fold_is_complete(fold_folder: Path) -> bool:
    """Trained to the end and its validation cases predicted and evaluated."""
    return (fold_folder / "training_summary.json").is_file() and (fold_folder / "validation" / "summary.json").is_file()


def training_settings(options: RunOptions) -> TrainingSettings:
    """The training settings of every fold of the run: resumable, validated, with the run's workers and budget."""
    from autoseg.training.loop import TrainingSettings
    from autoseg.training.schedule import epoch_seconds_for_budget, parse_time_budget

    base = TrainingSettings(
        resume=True, device=options.device, precision=options.precision, after_training_hooks=("predict_validation",),
        loggers=options.loggers, num_workers=options.workers, show_progress_bar=options.progress,
    )
    changes: dict = {}
    if options.time_budget:
        changes["time_budget_seconds"] = parse_time_budget(options.time_budget)
        if not options.iterations_per_epoch:
            changes["epoch_seconds"] = epoch_seconds_for_budget(changes["time_budget_seconds"])
    if options.epochs:
        changes["epochs"] = options.epochs
    if options.iterations_per_epoch:
        changes["iterations_per_epoch"] = options.iterations_per_epoch
    if options.validation_iterations is not None:
        changes["validation_iterations"] = options.validation_iterations
    return dataclasses.replace(base, **changes)


def train_stage(dataset_root: Path, work: Path, configurations: Sequence[str], options: RunOptions) -> None:
    from autoseg.training.command import build_job
    from autoseg.training.loop import train_fold
    from autoseg.utils.files import remove_stale_temporaries

    settings = training_settings(options)
    for configuration in configurations:
        for fold in options.folds:
            job = build_job(
                dataset=str(dataset_root), configuration_name=configuration, fold=str(fold),
                work_dir=str(work.parent), group_cases=options.group_cases,
            )
            if fold_is_complete(job.fold_folder):
                print(f"{configuration} fold {fold}: already trained and validated, skipping")
                continue
            _stage(f"train {configuration} fold {fold}")
            remove_stale_temporaries(job.fold_folder, recursive=True)  # a killed run's; the working folder is ours
            train_fold(job, settings)


def run_pipeline(dataset_root: str, work_dir: str | None, options: RunOptions) -> Path:
    """Run every stage; returns the report path. The working folder stays locked against other autoseg commands."""
    from autoseg.utils.locking import folder_lock

    started = time.monotonic()
    root = Path(dataset_root)
    if not root.is_dir():
        raise UserError(f"{dataset_root}: dataset folder not found.")
    work = dataset_work_dir(work_dir, root)
    with folder_lock(work):
        return _run_stages(root, work, options, started)


def _run_stages(root: Path, work: Path, options: RunOptions, started: float) -> Path:
    from autoseg.pipeline.report import build_report
    from autoseg.pipeline.selection import find_best, format_candidates
    from autoseg.preprocessing.preprocess_dataset import preprocess_dataset

    dataset, plans = plan_stage(root, work, options)
    configurations = configurations_to_train(plans, options.configurations, options.folds)
    _stage("preprocess")
    preprocess_dataset(
        dataset, plans=plans, dataset_work_folder=work, configuration_names=configurations, workers=options.workers,
        show_progress=options.progress,
    )
    train_stage(root, work, configurations, options)
    _stage("model selection + post-processing")
    recipe = find_best(work, configurations, list(options.folds), workers=options.workers, progress=options.progress)
    print(format_candidates(recipe))
    log_cross_validation(work, recipe, options.loggers)
    _stage("report")
    report = build_report(work)
    minutes = (time.monotonic() - started) / 60
    print(f"\nfinished in {minutes:.1f} min. Report: {report}")
    print(f"predict new images with:\n  autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {work}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder")
    add_work_dir_argument(parser)
    parser.add_argument("--configs", nargs="+", default=None, metavar="CONFIG",
                        help="configurations to train (default: every planned one; the cascade only with all five "
                             "folds)")
    parser.add_argument("--folds", nargs="+", type=int, default=list(DEFAULT_FOLDS), metavar="K",
                        help="cross-validation folds to train (default: 0 1 2 3 4)")
    parser.add_argument("--time-budget", default=None, help="wall-clock budget per fold, e.g. 10m, 2h")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold (ignored with --time-budget)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None)
    parser.add_argument("--validation-iterations", type=int, default=None,
                        help="validation batches per epoch (default 50, scaled down in time-sliced epochs)")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="planning budget (default 8)")
    parser.add_argument("--preset", default="default", help="default | resenc-m | resenc-l | resenc-xl")
    parser.add_argument("--workers", type=int, default=2, help="processes for data work (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    add_precision_argument(parser)
    parser.add_argument("--group-cases", default="none", choices=("none", "leading-number"),
                        help="keep related cases in one fold ('leading-number': NNN_* ids, e.g. HC18)")
    parser.add_argument("--replan", action="store_true", help="plan again even if plans.json exists")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_logger_argument(parser)


def run(args: argparse.Namespace) -> int:
    if any(fold not in DEFAULT_FOLDS for fold in args.folds):
        raise UserError(f"--folds take values 0-4, got {args.folds}.")
    options = RunOptions(
        configurations=tuple(args.configs) if args.configs else None,
        folds=tuple(dict.fromkeys(args.folds)),
        time_budget=args.time_budget,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        validation_iterations=args.validation_iterations,
        gpu_memory_gb=args.gpu_memory,
        preset=args.preset,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        group_cases=args.group_cases,
        replan=args.replan,
        progress=not args.no_progress,
        loggers=requested_loggers(args.logger),
    )
    run_pipeline(args.dataset, args.work_dir, options)
    return 0
