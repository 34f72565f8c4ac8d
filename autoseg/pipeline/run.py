"""``autoseg run``: check, fingerprint, plan, preprocess, train each configuration x fold, select, post-process, report.

Every stage skips work whose outputs exist and are valid, so a killed run resumes where it stopped: the fingerprint
is reused while its inputs are unchanged, an existing ``plans.json`` is kept (it may be hand-edited), preprocessed
cases are skipped when complete, a fold that finished (``training_summary.json``) is skipped and an unfinished one
resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.evaluation.folders import SUMMARY_FILE_NAME
from autoseg.pipeline.plan_dataset import plan_dataset
from autoseg.pipeline.report import build_report
from autoseg.pipeline.selection import find_best, format_candidates
from autoseg.pipeline.validation import training_components
from autoseg.planning.table import format_plans_table
from autoseg.preprocessing.preprocess_dataset import preprocess_dataset
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Plans
from autoseg.records.work_folder import TRAINING_SUMMARY_FILE, VALIDATION_FOLDER, WorkFolder
from autoseg.training.job import build_job
from autoseg.training.loop import TrainingSettings, train_fold
from autoseg.training.schedule import epoch_seconds_for_budget, parse_time_budget
from autoseg.training.tracking import log_cross_validation
from autoseg.utils.files import read_json, remove_stale_temporaries
from autoseg.utils.locking import folder_lock
from autoseg.utils.memory import describe_largest_case

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


def plan_stage(dataset_root: Path, work: WorkFolder, options: RunOptions) -> tuple[RawDataset, Plans]:
    _stage("check + fingerprint + plan")
    dataset, plans, kept = plan_dataset(
        dataset_root, work, preset=options.preset, gpu_memory_gb=options.gpu_memory_gb, workers=options.workers,
        keep_existing_plans=not options.replan, progress=options.progress,
    )
    print(f"{dataset.name}: {len(dataset.training_cases)} training cases, no errors")
    if kept:
        print(f"keeping the existing {work.plans} (use --replan to plan again)")
    print(format_plans_table(plans), end="")
    fingerprint_cases = read_json(work.fingerprint).get("cases", {})
    memory = describe_largest_case(
        {name: case["shape"] for name, case in fingerprint_cases.items()}, channels=dataset.num_channels,
        classes=dataset.num_output_channels, workers=options.workers,
    )
    if memory:
        print(memory)
    return dataset, plans


def configurations_to_train(plans: Plans, requested: Sequence[str] | None, folds: Sequence[int]) -> list[str]:
    """``requested`` (checked against the plan), else every planned configuration; a cascade's previous stage always
    comes before it.

    A cascade trains on out-of-fold segmentations of its previous stage, which need all five folds of that stage:
    when fewer folds are requested, the default leaves out the cascade and its low-resolution stage (which is of
    little use alone) and says so.
    """
    planned = plans.names
    if requested:
        unknown = [name for name in requested if name not in planned]
        if unknown:
            raise UserError(f"configuration {unknown[0]!r} is not in plans.json (planned: {', '.join(planned)}).")
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = planned
        cascades = [name for name in planned if plans.configuration(name).previous_stage]
        if cascades and set(DEFAULT_FOLDS) - set(folds):
            dropped = [*cascades, *(str(plans.configuration(name).previous_stage) for name in cascades)]
            print(f"not training {', '.join(dict.fromkeys(dropped))}: the cascade learns from out-of-fold predictions "
                  "of all five folds of its previous stage; run with every fold to train it")
            chosen = [name for name in planned if name not in dropped]
    for name in list(chosen):
        previous = plans.configuration(name).previous_stage
        if previous and previous in chosen and chosen.index(previous) > chosen.index(name):
            chosen.remove(previous)
            chosen.insert(chosen.index(name), previous)
    return chosen


def fold_is_complete(fold_folder: Path) -> bool:
    """Trained to the end and its validation cases predicted and evaluated."""
    validated = fold_folder / VALIDATION_FOLDER / SUMMARY_FILE_NAME
    return (fold_folder / TRAINING_SUMMARY_FILE).is_file() and validated.is_file()


def training_settings(options: RunOptions) -> TrainingSettings:
    """The training settings of every fold of the run: resumable, validated, with the run's workers and budget."""
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


def train_stage(
    dataset: RawDataset, work: WorkFolder, configurations: Sequence[str], options: RunOptions
) -> None:
    settings = training_settings(options)
    components = training_components()
    for configuration in configurations:
        for fold in options.folds:
            job = build_job(work, configuration, fold, dataset=dataset, group_cases=options.group_cases)
            if fold_is_complete(job.fold_folder):
                print(f"{configuration} fold {fold}: already trained and validated, skipping")
                continue
            _stage(f"train {configuration} fold {fold}")
            remove_stale_temporaries(job.fold_folder, recursive=True)  # a killed run's; the working folder is ours
            train_fold(job, settings, components=components)


def run_pipeline(dataset_root: str, work_dir: str | None, options: RunOptions) -> Path:
    """Run every stage; returns the report path. The working folder stays locked against other autoseg commands."""
    started = time.monotonic()
    root = Path(dataset_root)
    if not root.is_dir():
        raise UserError(f"{dataset_root}: dataset folder not found.")
    work = WorkFolder.for_dataset(work_dir, root)
    with folder_lock(work):
        return _run_stages(root, work, options, started)


def _run_stages(root: Path, work: WorkFolder, options: RunOptions, started: float) -> Path:
    dataset, plans = plan_stage(root, work, options)
    configurations = configurations_to_train(plans, options.configurations, options.folds)
    _stage("preprocess")
    preprocess_dataset(
        dataset, plans=plans, work_folder=work, configuration_names=configurations, workers=options.workers,
        show_progress=options.progress,
    )
    train_stage(dataset, work, configurations, options)
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
