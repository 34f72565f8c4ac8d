"""`autoseg demo`: generate the synthetic demo dataset(s) and run every pipeline stage that exists on them.

The demo is an ordered list of stages (``DEMO_STAGES``), each a function from the shared ``DemoRun`` record to a
one-line summary: generate the data, check it, then the whole ``autoseg run`` pipeline with a short time budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from autoseg.commands.arguments import add_work_dir_argument
from autoseg.data.check import check_dataset, format_problems
from autoseg.data.demo_data import DEMO_KINDS, demo_settings, existing_demo_settings, generate_demo_dataset
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import DatasetError
from autoseg.pipeline.run import DEFAULT_FOLDS, RunOptions, run_pipeline
from autoseg.records.dataset import RawDataset
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.work_folder import WorkFolder, resolve_work_dir

DEMO_DATA_FOLDER = "demo_data"


@dataclasses.dataclass
class DemoRun:
    """Everything the demo stages share: options, where things go, and what earlier stages produced."""

    work_dir: Path
    kind: str
    num_cases: int
    seed: int
    workers: int
    progress: bool
    folds: tuple[int, ...] | None = None  # None: the budget-fitted plans choose
    time_budget: str = "6m"  # the whole pipeline stage, planning to report
    dataset: RawDataset | None = None

    @property
    def dataset_root(self) -> Path:
        return self.work_dir / DEMO_DATA_FOLDER / DEMO_KINDS[self.kind].folder_name


DemoStage = Callable[[DemoRun], str]


def stage_generate(run: DemoRun) -> str:
    """Write the synthetic raw dataset, or reuse one generated earlier with the same settings."""
    wanted = demo_settings(kind=run.kind, num_cases=run.num_cases, seed=run.seed)
    if existing_demo_settings(run.dataset_root) == wanted:
        run.dataset = load_raw_dataset(run.dataset_root)
        return f"reused {run.num_cases} cases in {run.dataset_root}"
    generate_demo_dataset(
        run.dataset_root, kind=run.kind, num_cases=run.num_cases, seed=run.seed, overwrite=True,
        progress=run.progress,
    )
    run.dataset = load_raw_dataset(run.dataset_root)
    return f"wrote {run.num_cases} cases to {run.dataset_root}"


def stage_check(run: DemoRun) -> str:
    """Open every generated file, as a user's dataset would be checked."""
    problems = check_dataset(run.dataset_root, workers=run.workers, progress=run.progress)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DatasetError(f"{run.dataset_root}: the generated demo dataset failed its check:\n"
                           + format_problems(errors))
    return f"{len(problems)} warning(s), 0 errors"


def stage_pipeline(run: DemoRun) -> str:
    """``autoseg run`` on the demo data with a short time budget for the whole run, so the demo takes minutes on a
    laptop CPU: the plans are fitted to it (configurations, folds, network and batch; see docs/planning.md)."""
    # Few validation batches per epoch, so they do not eat the budget.
    options = RunOptions(folds=run.folds or DEFAULT_FOLDS, folds_named=run.folds is not None,
                         time_budget=run.time_budget, workers=run.workers, validation_iterations=4,
                         progress=run.progress)
    report = run_pipeline(str(run.dataset_root), str(run.work_dir), options)
    recipe = InferenceRecipe.read(WorkFolder(report.parent).inference_recipe)
    dice = recipe.cross_validation_dice_after_postprocessing
    if dice is None:
        dice = recipe.cross_validation_dice
    shown = "-" if dice is None else f"{dice:.3f}"
    return f"selected {recipe.selected}, cross-validation mean foreground Dice {shown}; report {report}"


# Pipeline order.
DEMO_STAGES: list[tuple[str, DemoStage]] = [
    ("generate", stage_generate),
    ("check", stage_check),
    ("plan, preprocess, train, select, report", stage_pipeline),
]


def run_demo(run: DemoRun, *, stages: list[tuple[str, DemoStage]] | None = None, stream=None) -> list[str]:
    """Run ``stages`` (default: every stage of ``DEMO_STAGES``) in order for one demo kind; return their names."""
    stream = stream or sys.stdout
    stages = DEMO_STAGES if stages is None else stages
    print(f"== autoseg demo ({run.kind}): {run.dataset_root}", file=stream, flush=True)
    ran = []
    for number, (name, stage) in enumerate(stages, start=1):
        print(f"[{number}/{len(stages)}] {name} ...", file=stream, flush=True)
        started = time.perf_counter()
        summary = stage(run)
        print(f"[{number}/{len(stages)}] {name}: done in {time.perf_counter() - started:.1f} s: {summary}",
              file=stream, flush=True)
        ran.append(name)
    return ran


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_work_dir_argument(parser)
    parser.add_argument("--kind", choices=[*DEMO_KINDS, "both"], default="3d",
                        help="which demo dataset: 3d (anisotropic MRI-like), 2d (ultrasound-like) or both")
    parser.add_argument("--num-cases", type=int, default=None,
                        help="cases to generate (default: " + ", ".join(
                            f"{kind} {demo.default_num_cases}" for kind, demo in DEMO_KINDS.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generator (default: 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--folds", nargs="+", type=int, default=None, metavar="K",
                        help="cross-validation folds to train (default: as many as the time budget pays for)")
    parser.add_argument("--time-budget", default="6m",
                        help="wall-clock time of the whole pipeline run, planning to report (default 6m); the plans "
                             "are fitted to it")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument("--data-only", action="store_true",
                        help="only generate and check the demo data; skip planning, training and selection")


def run(args: argparse.Namespace) -> int:
    work_dir = resolve_work_dir(args.work_dir)
    kinds = list(DEMO_KINDS) if args.kind == "both" else [args.kind]
    ran: list[str] = []
    stages = DEMO_STAGES[:2] if args.data_only else DEMO_STAGES
    for kind in kinds:
        num_cases = args.num_cases if args.num_cases is not None else DEMO_KINDS[kind].default_num_cases
        demo = DemoRun(work_dir=work_dir, kind=kind, num_cases=num_cases, seed=args.seed, workers=args.workers,
                       progress=not args.no_progress, folds=tuple(args.folds) if args.folds else None,
                       time_budget=args.time_budget)
        ran = run_demo(demo, stages=stages)
    print(f"Stages run: {', '.join(ran)}.")
    if args.data_only:
        print("Skipped (--data-only): plan, preprocess, train, select, report.")
    print(f"Outputs are in {work_dir / DEMO_DATA_FOLDER}.")
    return 0
