"""``autoseg run``: check, fingerprint, plan, preprocess, train each configuration x fold, select, post-process, report.

Every stage skips work whose outputs exist and are valid, so a killed run resumes where it stopped: the fingerprint
is reused while its inputs are unchanged, an existing ``plans.json`` is kept (it may be hand-edited), preprocessed
cases are skipped when complete, a fold that finished (``training_summary.json``) is skipped and an unfinished one
resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.evaluation.folders import SUMMARY_FILE_NAME
from autoseg.pipeline.adaptation import RUN_STANDARDISATION_CASES, standardisation_stage
from autoseg.pipeline.budget import ComputeFor, RunBudget, full_schedule_seconds
from autoseg.pipeline.machine_benchmark import MachineCosts, machine_costs, median_input_voxels
from autoseg.pipeline.plan_dataset import plan_dataset
from autoseg.pipeline.report import build_report
from autoseg.pipeline.selection import find_best, format_candidates
from autoseg.pipeline.validation import training_components
from autoseg.planning.layout import layout_kept_plans
from autoseg.planning.table import format_plans_table
from autoseg.preprocessing.preprocess_dataset import preprocess_dataset
from autoseg.records.compute_plan import ComputePlan
from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import load_fingerprint
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.plans import Configuration, Plans
from autoseg.records.work_folder import TRAINING_SUMMARY_FILE, VALIDATION_FOLDER, WorkFolder
from autoseg.training.job import TrainingSettings, build_job, describe_recipe, with_recipe
from autoseg.training.loop import train_fold
from autoseg.training.schedule import epoch_seconds_for_budget
from autoseg.training.tracking import log_cross_validation
from autoseg.utils.devices import choose_device
from autoseg.utils.durations import clock_time_in, describe_duration, parse_time_budget
from autoseg.utils.files import remove_stale_temporaries
from autoseg.utils.locking import folder_lock
from autoseg.utils.memory import describe_largest_case

DEFAULT_FOLDS = (0, 1, 2, 3, 4)
# After each fold: predict and score its validation cases.
AFTER_TRAINING_HOOKS = ("predict_validation",)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What ``autoseg run`` does; the defaults are the full automatic pipeline."""

    configurations: tuple[str, ...] | None = None
    folds: tuple[int, ...] = DEFAULT_FOLDS
    folds_named: bool = False  # the user chose the folds: a budget never drops one
    time_budget: str | None = None  # the whole run, planning to report (see autoseg.pipeline.budget)
    time_per_fold: str | None = None  # each fold's training alone
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


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """The configurations and folds the run trains, and the budget's decision behind them (None: no budget)."""

    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    compute: ComputePlan | None = None

    @property
    def pairs(self) -> int:
        return len(self.configurations) * len(self.folds)


def _unlimited(options: RunOptions) -> bool:
    return not (options.time_budget or options.time_per_fold or options.epochs)


def schedule_stage(
    plans: Plans, dataset: RawDataset, configurations: Sequence[str], options: RunOptions, budget: RunBudget, *,
    kept: bool = False,
) -> RunSchedule:
    """Say what the run will train and for how long.

    Plans fitted to this run's budget carry the decision (``plans.compute``); plans kept from an earlier run are laid
    out by the same rule (``autoseg.planning.layout.layout_kept_plans``); what the user named is trained.
    """
    _stage("schedule")
    device = choose_device(options.device)
    unlimited = _unlimited(options)
    # Only a budget or an unlimited run needs the machine's costs (measured once per machine and cached); fixed
    # epochs or a time per fold train every fold as asked.
    costs = machine_costs(dataset, device, options.precision) if unlimited or options.time_budget else None
    if unlimited and costs is not None:
        full = full_schedule_seconds([plans.configuration(name) for name in configurations], len(options.folds), costs)
        print(f"the full schedule (1000 epochs x 250 steps, {len(configurations)} configuration(s) x "
              f"{len(options.folds)} fold(s)) would train for about {describe_duration(full)} on {device}")
    budget.apply_cpu_default(device, limited=not unlimited)
    schedule = RunSchedule(tuple(configurations), tuple(options.folds))
    if budget.budget_seconds is not None and costs is not None:
        compute = plans.compute
        if compute is None or kept:
            compute = layout_kept_plans(plans, configurations, budget.layout_budget(
                costs, folds=options.folds, folds_named=options.folds_named, configurations=options.configurations))
        chosen = tuple(configurations)
        if not options.configurations:
            chosen = tuple(name for name in configurations if name in compute.configurations) or chosen
        folds = tuple(options.folds) if options.folds_named else compute.folds
        schedule = RunSchedule(chosen, folds, compute)
    print(describe_schedule(schedule, plans, budget, costs))
    return schedule


def describe_schedule(schedule: RunSchedule, plans: Plans, budget: RunBudget, costs: MachineCosts | None) -> str:
    """What will train, how long each fold, how many steps that buys, and when the run should end."""
    reasons = schedule.compute.reasons if schedule.compute is not None else ()
    lines = [*reasons, f"training {', '.join(schedule.configurations)} x folds "
             f"{', '.join(str(fold) for fold in schedule.folds)} ({schedule.pairs} fold(s))"]
    if budget.budget_seconds is not None:
        seconds_per_fold = budget.training_seconds() / schedule.pairs
        lines.append(f"each fold trains for {describe_duration(seconds_per_fold)}")
        for name in schedule.configurations if costs is not None else ():
            seconds = costs.step_seconds(plans.configuration(name))
            lines.append(f"  {name}: about {seconds:.2f} s per step, so about "
                         f"{seconds_per_fold / seconds:.0f} steps per fold")
        lines.append(f"budget {describe_duration(budget.budget_seconds)} for the whole run: expected to end by "
                     f"{clock_time_in(float(budget.seconds_left or 0.0))}")
    return "\n".join(lines)


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def plan_stage(dataset_root: Path, work: WorkFolder, options: RunOptions,
               compute_for: ComputeFor | None = None) -> tuple[RawDataset, Plans, bool]:
    """Check, fingerprint and plan (fitted to the budget with ``compute_for``); the plans, and whether they were kept
    from an earlier run."""
    _stage("check + fingerprint + plan")
    dataset, plans, kept = plan_dataset(
        dataset_root, work, preset=options.preset, gpu_memory_gb=options.gpu_memory_gb, workers=options.workers,
        keep_existing_plans=not options.replan, progress=options.progress, compute_for=compute_for,
    )
    print(f"{dataset.name}: {len(dataset.training_cases)} training cases, no errors")
    if kept:
        print(f"keeping the existing {work.plans} (use --replan to plan again)")
    print(format_plans_table(plans), end="")
    fingerprint_cases = load_fingerprint(work.fingerprint).cases
    memory = describe_largest_case(
        {name: case.shape for name, case in fingerprint_cases.items()}, channels=dataset.num_channels,
        classes=dataset.num_output_channels, workers=options.workers,
    )
    if memory:
        print(memory)
    return dataset, plans, kept


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


def training_settings(
    options: RunOptions, fold_seconds: float | None = None, *, recipe: dict | None = None
) -> TrainingSettings:
    """The training settings of every fold of the run: resumable, validated, augmenting as the device is best fed
    (``default_number_of_workers``: in line on CPU, background workers on a GPU), the time each fold may train
    (``fold_seconds`` from the run's budget, else ``--time-per-fold``) and the plan's recipe for the configuration
    (``recipe``, from the compute record; None or empty: the reference's)."""
    base = TrainingSettings(
        resume=True, device=options.device, precision=options.precision, after_training_hooks=AFTER_TRAINING_HOOKS,
        loggers=options.loggers, show_progress_bar=options.progress,
    )
    changes: dict = {}
    if fold_seconds is None and options.time_per_fold:
        fold_seconds = parse_time_budget(options.time_per_fold)
    if fold_seconds is not None:
        changes["time_budget_seconds"] = fold_seconds
        if not options.iterations_per_epoch:
            changes["epoch_seconds"] = epoch_seconds_for_budget(fold_seconds)
    if options.epochs:
        changes["epochs"] = options.epochs
    if options.iterations_per_epoch:
        changes["iterations_per_epoch"] = options.iterations_per_epoch
    if options.validation_iterations is not None:
        changes["validation_iterations"] = options.validation_iterations
    return with_recipe(dataclasses.replace(base, **changes), recipe or {})


def train_stage(
    dataset: RawDataset, work: WorkFolder, plans: Plans, schedule: RunSchedule, options: RunOptions, budget: RunBudget
) -> None:
    """Train (or resume) every scheduled fold, saying ``fold k/N`` and the run's expected finish after each."""
    components = training_components()
    pairs = [(configuration, fold) for configuration in schedule.configurations for fold in schedule.folds]
    jobs = [build_job(work, configuration, fold, dataset=dataset, group_cases=options.group_cases)
            for configuration, fold in pairs]
    to_train = [job.fold_folder for job in jobs if not fold_is_complete(job.fold_folder)]
    reserve = 0.0
    mirroring = dict.fromkeys(schedule.configurations, True)
    if budget.budget_seconds is not None:
        costs = machine_costs(dataset, choose_device(options.device), options.precision)
        voxels = median_input_voxels(plans)
        for configuration in schedule.configurations:
            mirroring[configuration] = validation_mirroring(costs, plans.configuration(configuration), voxels)
        # Validation, then test-time standardisation of the selected model (counted for every fold: an upper bound).
        reserve = budget.after_training_reserve(
            [(len(job.validation_case_ids) + min(RUN_STANDARDISATION_CASES, len(job.train_case_ids)),
              costs.case_prediction_seconds(plans.configuration(configuration), input_voxels=voxels,
                                            mirrored=mirroring[configuration]))
             for (configuration, _), job in zip(pairs, jobs, strict=True)],
        )
        print(f"keeping {describe_duration(reserve)} of the budget for validation, model selection and the report")
    for number, ((configuration, fold), job) in enumerate(zip(pairs, jobs, strict=True), start=1):
        if job.fold_folder not in to_train:
            print(f"{configuration} fold {fold} ({number}/{len(pairs)}): already trained and validated, skipping")
            continue
        _stage(f"train {configuration} fold {fold} (fold {number}/{len(pairs)})")
        fold_seconds = None
        if budget.budget_seconds is not None:
            fold_seconds = budget.fold_seconds(reserve, len(to_train))
            print(f"this fold trains for {describe_duration(fold_seconds)}")
        to_train.remove(job.fold_folder)
        remove_stale_temporaries(job.fold_folder, recursive=True)  # a killed run's; the working folder is ours
        recipe = plans.training_recipe(configuration)
        if recipe:
            print(f"training recipe for a short schedule (plans.json compute record): {describe_recipe(recipe)}")
        settings = training_settings(options, fold_seconds, recipe=recipe)
        train_fold(job, dataclasses.replace(settings, validation_mirroring=mirroring[configuration]),
                   components=components)
        print(budget.progress_line(done=number, total=len(pairs)), flush=True)


MIRRORING_CASE_SECONDS = 30.0  # mirroring is recommended while a median case takes at most this long with it


def validation_mirroring(costs: MachineCosts, configuration: Configuration, voxels: float | None) -> bool:
    """Whether a budgeted run predicts ``configuration``'s validation cases with test-time mirroring: while one fold
    predicts a median case (``voxels`` in its own grid) within ``MIRRORING_CASE_SECONDS`` with it, the rule
    ``prediction_advice`` recommends predicting by. Else the cross-validation Dice is that of ``predict --no-tta``,
    and the reserve for validation does not starve training (a 2D network over every slice of a CT volume: minutes
    per case with mirroring), as the printed line says."""
    mirrored = costs.case_prediction_seconds(configuration, input_voxels=voxels)
    if mirrored is None or mirrored <= MIRRORING_CASE_SECONDS:
        return True
    plain = costs.case_prediction_seconds(configuration, input_voxels=voxels, mirrored=False) or 0.0
    print(f"validation predicts {configuration.name} without test-time mirroring: about {mirrored:.0f} s per "
          f"median-sized case with it, {plain:.0f} s without; its cross-validation Dice is that of predict --no-tta")
    return False


def prediction_advice(work: WorkFolder, plans: Plans, recipe: InferenceRecipe, costs: MachineCosts | None) -> str:
    """How to predict new images with the selected model: with test-time mirroring while a median-sized case is
    predicted in at most ``MIRRORING_CASE_SECONDS`` with it (a case twice the median then stays within a minute),
    else without it, saying why (a CT volume predicted on a coarse grid can spend minutes in mirrored passes)."""
    command = f"predict new images with:\n  autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {work}"
    if costs is None:
        return command
    voxels = median_input_voxels(plans)
    def seconds(mirrored: bool) -> float | None:
        each = [(costs.case_prediction_seconds(plans.configuration(model.configuration), input_voxels=voxels,
                                               mirrored=mirrored), len(model.folds or (0,))) for model in recipe.models]
        return None if any(value is None for value, _ in each) else sum(float(value) * folds for value, folds in each)
    with_mirroring, without = seconds(True), seconds(False)
    if with_mirroring is None or without is None or with_mirroring <= MIRRORING_CASE_SECONDS:
        return command
    return (f"{command} --no-tta\n(mirroring would take about {with_mirroring:.0f} s per median-sized case on this "
            f"machine, {without:.0f} s without it; drop --no-tta for the last fraction of a Dice point)")


def run_pipeline(dataset_root: str, work_dir: str | None, options: RunOptions) -> Path:
    """Run every stage; returns the report path. The working folder stays locked against other autoseg commands."""
    budget = RunBudget.start(options.time_budget)
    root = Path(dataset_root)
    if not root.is_dir():
        raise UserError(f"{dataset_root}: dataset folder not found.")
    work = WorkFolder.for_dataset(work_dir, root)
    with folder_lock(work):
        return _run_stages(root, work, options, budget)


def _run_stages(root: Path, work: WorkFolder, options: RunOptions, budget: RunBudget) -> Path:
    device = choose_device(options.device)
    budget.apply_cpu_default(device, limited=not _unlimited(options))
    compute_for = None
    if budget.budget_seconds is not None:  # the plans are fitted to what is left of the budget on this machine
        compute_for = budget.compute_for(device, options.precision, folds=options.folds,
                                         folds_named=options.folds_named, configurations=options.configurations)
    dataset, plans, kept = plan_stage(root, work, options, compute_for)
    configurations = configurations_to_train(plans, options.configurations, options.folds)
    schedule = schedule_stage(plans, dataset, configurations, options, budget, kept=kept)
    configurations = list(schedule.configurations)
    _stage("preprocess")
    preprocess_dataset(
        dataset, plans=plans, work_folder=work, configuration_names=configurations, workers=options.workers,
        show_progress=options.progress,
    )
    train_stage(dataset, work, plans, schedule, options, budget)
    _stage("model selection + post-processing")
    recipe = find_best(work, configurations, list(schedule.folds), workers=options.workers, progress=options.progress)
    print(format_candidates(recipe))
    log_cross_validation(work, recipe, options.loggers)
    _stage("test-time standardisation (for predict --adapt)")
    costs = machine_costs(dataset, device, options.precision) if budget.budget_seconds is not None else None
    standardisation_stage(
        work, recipe, device=str(device), precision=options.precision, budget=budget,
        case_seconds=lambda name: None if costs is None else costs.case_prediction_seconds(
            plans.configuration(name), input_voxels=median_input_voxels(plans)),
    )
    _stage("report")
    report = build_report(work)
    print(f"\nReport: {report}")
    print(prediction_advice(work, plans, recipe, costs))
    print(budget.final_line(), flush=True)
    return report
