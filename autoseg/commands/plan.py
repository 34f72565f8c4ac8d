"""``autoseg plan``: fingerprint a raw dataset and plan its configurations into the working folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.commands.arguments import add_schedule_arguments, add_work_dir_argument, requested_folds
from autoseg.errors import UserError
from autoseg.pipeline.budget import RunBudget
from autoseg.pipeline.plan_dataset import plan_dataset
from autoseg.planning.presets import PRESETS
from autoseg.planning.table import format_plans_table
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.devices import choose_device
from autoseg.utils.locking import folder_lock
from autoseg.utils.precision import add_precision_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (with dataset.json, imagesTr/, labelsTr/)")
    add_work_dir_argument(parser)
    parser.add_argument(
        "--gpu-memory", type=float, default=None, metavar="GB",
        help="training-memory budget per GPU in GB (default: the preset's, 8 for 'default' and 'resenc-m')",
    )
    parser.add_argument(
        "--preset", choices=list(PRESETS), default="default",
        help="network family: plain U-Net or residual-encoder U-Net M/L/XL (budgets 8/24/40 GB)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes reading cases in parallel (default: 2)")
    parser.add_argument(
        "--time-budget", default=None,
        help="fit the plans to a whole run of this wall-clock time on this machine (e.g. 45m, 2h): coarser spacing, "
             "smaller batch or network, fewer configurations and folds when the time cannot pay for the full plan; "
             "the reasoning goes into plans.json and is printed. Without it plans are fitted to memory alone",
    )
    add_schedule_arguments(parser)
    parser.add_argument("--device", default=None, help="device the budget is planned for (default: best available)")
    add_precision_argument(parser)
    parser.add_argument("--show", action="store_true", help="print the existing plans.json as a table and stop")
    parser.add_argument("--recompute-fingerprint", action="store_true",
                        help="recompute fingerprint.json even if the inputs did not change")


def run(args: argparse.Namespace) -> int:
    work = WorkFolder.for_dataset(args.work_dir, args.dataset)
    if args.show:
        print(format_plans_table(load_plans(work.plans)), end="")
        return 0
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}.")
    if not Path(args.dataset).is_dir():
        raise UserError(f"{args.dataset}: dataset folder not found.")
    folds, folds_named = requested_folds(args)
    if (args.configs or folds_named) and not args.time_budget:
        raise UserError("--configs and --folds tell a time budget what the run will train; give --time-budget too "
                        "(without a budget every configuration is planned for every fold).")
    compute_for = None
    if args.time_budget:  # the budget of a whole run starting now, training what `autoseg run` would be told to
        compute_for = RunBudget.start(args.time_budget).compute_for(
            choose_device(args.device), args.precision, folds=folds, folds_named=folds_named,
            configurations=tuple(dict.fromkeys(args.configs)) if args.configs else None)
    with folder_lock(work):
        _, plans, _ = plan_dataset(
            args.dataset, work, preset=args.preset, gpu_memory_gb=args.gpu_memory, workers=args.workers,
            recompute_fingerprint=args.recompute_fingerprint, compute_for=compute_for,
        )
    unplanned = [name for name in args.configs or () if name not in plans.names]
    if unplanned:
        raise UserError(f"configuration {unplanned[0]!r} is not in the plan (planned: {', '.join(plans.names)}).")
    print(format_plans_table(plans), end="")
    print(f"\nwrote {work.fingerprint} and {work.plans}")
    return 0
