"""Benchmark: README's first command, ``autoseg demo``, as a user runs it with its output sent to a file.

Runs ``autoseg demo`` as a whole process (default options: the 3D demo, a 6-minute budget, progress on) with
stdout and stderr in a log file and, unless ``--keep-cache``, an empty cache folder, so that it measures the
machine's throughput as a first run on a new machine does. It records what README's demo paragraph states: the
plan the budget chose (configuration, network width, batch, folds), the steps trained, the wall time, the
cross-validation Dice per class, and how the log reads in a file (bytes, lines, carriage returns, its last line).
README quotes the newest of these result files; ``tests/test_readme.py`` checks that every figure there matches it.

Usage (about 6 minutes on 2 cores; the work folder is replaced on each run):

    python benchmarks/demo.py [--work-dir WORK] [--keep-cache] [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from locations import scratch_folder
from nnunet_peer import load_average, run_quietly
from provenance import REPOSITORY, provenance

from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import read_json, write_json
from autoseg.utils.progress import format_duration

DEMO_DATASET = "Dataset990_Demo3D"


def run_demo(work: Path, log: Path, *, cache: Path | None) -> float:
    """``autoseg demo`` with its output in ``log``, with ``cache`` as its cache folder (None: the user's); returns
    its wall-clock seconds."""
    environment = dict(os.environ)
    if cache is not None:
        environment["XDG_CACHE_HOME"] = str(cache)
    started = time.monotonic()
    run_quietly([sys.executable, "-m", "autoseg", "demo", "--work-dir", str(work)], log=log, environment=environment)
    return time.monotonic() - started


def plan_and_steps(work_folder: WorkFolder, configuration: str, folds: list[int]) -> dict:
    """The selected configuration's planned network and batch, and the steps each trained fold took."""
    plans = read_json(work_folder.plans)
    planned = plans["configurations"][configuration]
    steps = [read_json(work_folder.fold(configuration, fold) / "training_summary.json")["iterations_done"]
             for fold in folds]
    return {"configuration": configuration, "features": planned["network"]["features_per_stage"][0],
            "batch_size": planned["batch_size"], "folds": folds, "steps": steps,
            "compute": plans.get("compute")}


def class_dice(work_folder: WorkFolder, configuration: str) -> dict[str, float]:
    """Cross-validation Dice per class of the selected configuration (mean over the validation cases)."""
    return EvaluationSummary.read(work_folder.crossval(configuration)).dice_per_class


def log_shape(log: Path, work: Path) -> dict:
    """Size, lines and carriage returns of the log, and its last line with the working folder written WORK."""
    data = log.read_bytes()
    lines = data.decode(errors="replace").splitlines()
    return {"bytes": len(data), "lines": len(lines), "carriage_returns": data.count(b"\r"),
            "last_line": lines[-1].replace(str(work), "WORK") if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=scratch_folder("autoseg_demo_benchmark"),
                        help="the demo's working folder, emptied first (default: in the temporary folder)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the machine's cached throughput measurement (default: measure it, as a first run "
                             "on a new machine does)")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks" / "results" / "demo.json")
    args = parser.parse_args()
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work.parent / f"{work.name}.log"
    cache = None if args.keep_cache else work.parent / f"{work.name}_cache"
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    load_at_start = load_average()
    seconds = run_demo(work, log, cache=cache)
    work_folder = WorkFolder(work / DEMO_DATASET)
    recipe = InferenceRecipe.read(work_folder.inference_recipe)
    model = recipe.models[0]
    result = {
        "command": "autoseg demo > demo.log 2>&1 (python benchmarks/demo.py)",
        "provenance": provenance(),
        "wall_seconds": seconds,
        "throughput_measured_in_the_run": not args.keep_cache,
        "load_average": {"at_start": load_at_start, "at_end": load_average()},
        **plan_and_steps(work_folder, model.configuration, list(model.folds or ())),
        "cross_validation_dice": class_dice(work_folder, model.configuration),
        "cross_validation_mean_dice": recipe.cross_validation_dice,
        "cross_validation_mean_dice_after_postprocessing": recipe.cross_validation_dice_after_postprocessing,
        "log": log_shape(log, work),
    }
    write_json(args.out, result)
    print(f"demo: {format_duration(seconds)}, {result['configuration']} {result['features']} features, batch "
          f"{result['batch_size']}, steps {result['steps']}, Dice {result['cross_validation_dice']}; log "
          f"{result['log']['bytes']} bytes, {result['log']['carriage_returns']} carriage returns\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
