"""Training recipes for short schedules: one change at a time from today's recipe, at a fixed number of steps.

Every cell of the study is ``autoseg train`` with a few recipe options (``--momentum``, ``--augmentation``, ...) on
the same planned and preprocessed folder, for the same number of optimiser steps (the steps a time budget trains,
e.g. 1824 for Hippocampus in 15 minutes), on two or more folds. The score is the fold's validation mean Dice as
``autoseg train`` reports it after predicting the fold's held-out cases (the cross-validation Dice, before
post-processing). A fixed step count makes the cells comparable on a shared machine, where wall-clock budgets would
depend on what else runs; each cell's seconds per step are reported too, because a recipe that makes steps cheaper
(lighter augmentation) buys more of them in a budget.

Runs ``--parallel`` trainings at once with one torch thread and one augmentation worker each (on two cores that
trains about 1.25x more steps per hour than one run with two threads). Finished cells are read back, not retrained,
so the study can be stopped and extended.

Example:
    autoseg plan ../shared/datasets/Dataset004_Hippocampus --work-dir WORK --time-budget 15m
    autoseg preprocess ../shared/datasets/Dataset004_Hippocampus --work-dir WORK
    python benchmarks/recipe_study.py ../shared/datasets/Dataset004_Hippocampus --work WORK \\
        --configuration 3d_fullres --steps 1800 --folds 0 1 --cells baseline light_augmentation --out SCRATCH
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance

# One change at a time from today's recipe (SGD, Nesterov momentum 0.99, lr 0.01, poly decay, reference augmentation).
CELLS: dict[str, list[str]] = {
    "baseline": [],
    "weight_average_0.995": ["--weight-averaging", "0.995"],
    "weight_average_0.999": ["--weight-averaging", "0.999"],
    # Momentum 0.9 at 10x the learning rate keeps SGD's effective step (lr / (1 - momentum)) and shortens its memory.
    "momentum_0.9_lr_0.1": ["--momentum", "0.9", "--learning-rate", "0.1"],
    "learning_rate_0.02": ["--learning-rate", "0.02"],
    "adamw_lr_0.001": ["--optimizer", "adamw", "--learning-rate", "0.001"],
    "adamw_lr_0.003_warmup": ["--optimizer", "adamw", "--learning-rate", "0.003", "--warmup", "0.05"],
    "linear_schedule": ["--schedule", "linear"],
    "cosine_schedule": ["--schedule", "cosine"],
    "light_augmentation": ["--augmentation", "light"],
    "mirror_only_augmentation": ["--augmentation", "mirror"],
    # Changes from the short-schedule recipe budgeted plans train today (``autoseg/planning/short_schedule.py``).
    "short_schedule_batch_2": ["--momentum", "0.9", "--learning-rate", "0.1", "--batch-size", "2"],
    "short_schedule_cosine": ["--momentum", "0.9", "--learning-rate", "0.1", "--schedule", "cosine"],
    "short_schedule_warmup": ["--momentum", "0.9", "--learning-rate", "0.1", "--warmup", "0.05"],
    "short_schedule_lr_0.2": ["--momentum", "0.9", "--learning-rate", "0.2"],
}
WORK_FILES = ("dataset.json", "fingerprint.json", "plans.json", "splits.json", "label_round_trip.json")
ITERATIONS_PER_EPOCH = 100


def cell_work_folder(source: Path, dataset_name: str, cell_root: Path) -> Path:
    """A working folder for one cell: the source's records copied, its preprocessed cases and the validation's ground
    truth linked (read only)."""
    target = cell_root / dataset_name
    target.mkdir(parents=True, exist_ok=True)
    for name in WORK_FILES:
        if (source / name).is_file() and not (target / name).is_file():
            shutil.copy2(source / name, target / name)
    for shared in ("preprocessed", "ground_truth"):
        link = target / shared
        if not link.exists() and (source / shared).is_dir():
            link.symlink_to((source / shared).resolve(), target_is_directory=True)
    return cell_root


def summary_of(cell_root: Path, dataset_name: str, configuration: str, fold: int) -> dict | None:
    path = cell_root / dataset_name / "models" / configuration / f"fold_{fold}" / "training_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cell_steps(args: argparse.Namespace, cell: str) -> int:
    """The cell's optimiser steps: ``--steps``, or its own from ``--cell-steps`` (equal time for a cheaper step)."""
    return args.cell_steps.get(cell, args.steps)


def train_command(args: argparse.Namespace, cell: str, cell_root: Path, fold: int, seed: int) -> list[str]:
    epochs = max(1, round(cell_steps(args, cell) / ITERATIONS_PER_EPOCH))
    return [
        sys.executable, "-m", "autoseg", "train", str(args.dataset), args.configuration, str(fold),
        "--work-dir", str(cell_root), "--epochs", str(epochs), "--iterations-per-epoch", str(ITERATIONS_PER_EPOCH),
        "--validation-iterations", "10", "--threads", "1", "--num-workers", "1", "--seed", str(seed),
        "--reference-recipe", *CELLS[cell],
    ]


def run_jobs(jobs: list[tuple[list[str], Path]], parallel: int) -> None:
    """Run the commands, ``parallel`` at a time, each writing its log; a failed job is reported, not fatal."""
    running: list[tuple[subprocess.Popen, Path]] = []
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            command, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"start: {' '.join(command[3:])}", flush=True)
            running.append((subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for process, log in list(running):
            if process.poll() is not None:
                running.remove((process, log))
                print(f"{'done' if process.returncode == 0 else f'FAILED ({process.returncode})'}: {log}", flush=True)


def fold_result(summary: dict) -> dict:
    validation = summary.get("after_training", {}).get("predict_validation", {})
    return {
        "validation_mean_dice": validation.get("mean_dice"),
        "iterations": summary["iterations_done"],
        "seconds_per_step": round(summary["elapsed_seconds"] / max(1, summary["iterations_done"]), 3),
    }


def table(results: dict, folds: list[int], baseline_cell: str = "baseline") -> str:
    """Markdown: per cell the folds' Dice, their mean, and the mean paired difference to the baseline cell."""
    baseline = results.get(baseline_cell, {})
    lines = ["| cell | " + " | ".join(f"fold {fold}" for fold in folds) + " | mean | vs baseline (per fold) | s/step |",
             "|---" * (len(folds) + 4) + "|"]
    for cell, per_fold in results.items():
        dice = [per_fold.get(str(fold), {}).get("validation_mean_dice") for fold in folds]
        known = [value for value in dice if value is not None]
        deltas = [value - baseline[str(fold)]["validation_mean_dice"] for fold, value in zip(folds, dice, strict=True)
                  if value is not None and str(fold) in baseline]
        seconds = [per_fold[str(fold)]["seconds_per_step"] for fold in folds if str(fold) in per_fold]
        cells = [f"{value:.4f}" if value is not None else "-" for value in dice]
        mean = f"{statistics.mean(known):.4f}" if known else "-"
        delta = (f"{statistics.mean(deltas):+.4f} ({', '.join(f'{d:+.4f}' for d in deltas)})"
                 if deltas and cell != baseline_cell else "")
        step = f"{statistics.mean(seconds):.3f}" if seconds else "-"
        lines.append(f"| {cell} | {' | '.join(cells)} | {mean} | {delta} | {step} |")
    return "\n".join(lines)


def portable_command(args: argparse.Namespace) -> str:
    """The command that produced the result, with this machine's folders replaced by placeholders."""
    words = [f"../shared/datasets/{args.dataset.resolve().name}", "--work", "WORK", "--configuration",
             args.configuration, "--steps", str(args.steps), "--folds", *map(str, args.folds), "--seed",
             str(args.seed), "--cells", *args.cells, "--parallel", str(args.parallel), "--out", "SCRATCH"]
    words += [f"--cell-steps {cell}={steps}" for cell, steps in args.cell_steps.items()]
    if args.baseline != "baseline":
        words += ["--baseline", args.baseline]
    return "python benchmarks/recipe_study.py " + " ".join(words)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="raw dataset folder")
    parser.add_argument("--work", type=Path, required=True, help="working folder already planned and preprocessed")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps per training")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--cell-steps", action="append", default=[], metavar="CELL=STEPS",
                        help="a cell's own steps instead of --steps, e.g. a smaller batch given the same time (repeat)")
    parser.add_argument("--baseline", default="baseline", help="the cell the table's differences are taken from")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at once (one thread each)")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder for the cells' models and logs")
    parser.add_argument("--result", type=Path, default=None, help="JSON result file (default: OUT/recipe_study.json)")
    args = parser.parse_args()
    pairs = [item.partition("=") for item in args.cell_steps]
    if any(cell not in CELLS or not steps.isdigit() for cell, _, steps in pairs):
        parser.error(f"--cell-steps takes CELL=STEPS with a known cell, got {args.cell_steps}")
    args.cell_steps = {cell: int(steps) for cell, _, steps in pairs}
    return args


def main() -> int:
    args = parse_arguments()
    dataset_name = args.dataset.resolve().name
    source = args.work / dataset_name
    jobs = []
    for cell in args.cells:
        cell_root = cell_work_folder(source, dataset_name, args.out / cell)
        for fold in args.folds:
            if summary_of(cell_root, dataset_name, args.configuration, fold) is None:
                log = args.out / cell / f"fold_{fold}.log"
                jobs.append((train_command(args, cell, cell_root, fold, args.seed), log))
    run_jobs(jobs, args.parallel)
    results = {}
    for cell in args.cells:
        per_fold = {}
        for fold in args.folds:
            summary = summary_of(args.out / cell, dataset_name, args.configuration, fold)
            if summary is not None:
                per_fold[str(fold)] = fold_result(summary)
        results[cell] = per_fold
    record = {
        "provenance": provenance(),
        "command": portable_command(args),
        "dataset": dataset_name,
        "configuration": args.configuration,
        "steps": {cell: cell_steps(args, cell) for cell in args.cells},
        "folds": args.folds,
        "cells": {cell: CELLS[cell] for cell in args.cells},
        "results": results,
        "note": "validation mean Dice of each fold's held-out cases after training (cross-validation, before "
                "post-processing); seconds per step with --parallel trainings sharing the CPUs",
    }
    result_path = args.result or args.out / "recipe_study.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=1) + "\n")
    print(table(results, args.folds, args.baseline))
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
