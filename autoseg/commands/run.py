"""``autoseg run``: the whole pipeline in one command (see ``autoseg.pipeline.run``)."""

from __future__ import annotations

import argparse

from autoseg.commands.arguments import add_schedule_arguments, add_work_dir_argument, requested_folds
from autoseg.errors import UserError
from autoseg.pipeline.run import RunOptions, run_pipeline
from autoseg.training.tracking import add_logger_argument, requested_loggers
from autoseg.utils.precision import add_precision_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder")
    add_work_dir_argument(parser)
    add_schedule_arguments(parser)
    parser.add_argument("--time-budget", default=None,
                        help="wall-clock budget of the whole run, planning to report, e.g. 1h, 90m (default on a "
                             "machine without a GPU: 1h); see docs/planning.md")
    parser.add_argument("--time-per-fold", default=None, help="train each fold for this long instead, e.g. 10m")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold (ignored with a time budget)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None)
    parser.add_argument("--validation-iterations", type=int, default=None,
                        help="validation batches per epoch (default 50, scaled down in time-sliced epochs)")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="planning budget (default 8)")
    parser.add_argument("--preset", default="default", help="default | resenc-m | resenc-l | resenc-xl")
    parser.add_argument(
        "--workers", type=int, default=2,
        help="processes reading, preprocessing and evaluating cases (default 2); training augments in line on CPU "
             "and with one background worker per CPU on a GPU",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    add_precision_argument(parser)
    parser.add_argument("--group-cases", default="none", choices=("none", "leading-number"),
                        help="keep related cases in one fold ('leading-number': NNN_* ids, e.g. HC18)")
    parser.add_argument("--replan", action="store_true", help="plan again even if plans.json exists")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_logger_argument(parser)


def run(args: argparse.Namespace) -> int:
    folds, folds_named = requested_folds(args)
    if args.time_budget and args.time_per_fold:
        raise UserError("give either --time-budget (the whole run) or --time-per-fold, not both.")
    options = RunOptions(
        configurations=tuple(args.configs) if args.configs else None,
        folds=folds,
        folds_named=folds_named,
        time_budget=args.time_budget,
        time_per_fold=args.time_per_fold,
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
