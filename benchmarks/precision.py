"""Benchmark: the same training in bfloat16 and in float32, same seed and same steps; Dice and seconds of each.

Does ``--precision auto`` (bfloat16 autocast on a CPU with native bfloat16) cost accuracy, and what does it save?
Both runs train Hippocampus 3d_fullres fold 0 of autoseg's own plan from the same initialisation (``--seed 0``) for
exactly ``--iterations`` optimiser steps at batch ``--batch-size`` (one epoch, no validation steps), one after the
other on this machine. Each trained model then predicts the fold's validation cases twice, in float32 and in
bfloat16 (final weights, sliding window without mirroring, which would make prediction 8x slower and
tells nothing more about precision), so the table separates what training in bfloat16 does
from what predicting in bfloat16 does. Dice is scored by ``evaluate_folders`` against the raw labels.

Seconds per step are the training clock of each run (``training_summary.json``) and the load average is printed
with them: on a shared machine compare the two precisions of one run, never figures from another day.

``--speed-only`` trains each precision for ``--iterations`` steps and predicts nothing: on a quiet machine, a speed
figure without an accuracy one (``precision_speed_<dataset>.json``).

Usage (preprocessing once per scratch folder takes about a minute on 2 cores; 300 steps take 10-40 minutes per
precision depending on the CPU and on what else runs on it):

    python benchmarks/precision.py [--iterations 300] [--batch-size 7] [--scratch SCRATCH] [--datasets-root FOLDER]
    python benchmarks/precision.py --speed-only --iterations 30

Writes ``benchmarks/results/precision_<dataset>.json`` (``--out``) with the provenance of the run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from locations import add_datasets_root_argument, require_datasets, scratch_folder
from nnunet_peer import load_average, run_quietly
from provenance import REPOSITORY, provenance, relative_to_repository

from autoseg.evaluation.folders import evaluate_folders
from autoseg.evaluation.targets import targets_from_dataset_json
from autoseg.utils.files import read_json, write_json

CONFIGURATION = "3d_fullres"
PRECISIONS = ("float32", "bfloat16")


def autoseg(*arguments: str, log: Path) -> None:
    """``python -m autoseg ARGUMENTS`` with its output in ``log``; stop with the log's tail on failure."""
    run_quietly([sys.executable, "-m", "autoseg", *arguments], log=log)


def prepare(raw: Path, work: Path, scratch: Path) -> Path:
    """autoseg's own plan (memory-fitted, no time budget) preprocessed once; returns the dataset's work folder."""
    folder = work / raw.name
    if not (folder / "preprocessed" / CONFIGURATION).is_dir():
        autoseg("plan", str(raw), "--work-dir", str(work), "--device", "cpu", log=scratch / "plan.log")
        autoseg("preprocess", str(raw), "-c", CONFIGURATION, "--work-dir", str(work), log=scratch / "preprocess.log")
    return folder


def train(raw: Path, work: Path, scratch: Path, *, precision: str, iterations: int,
          batch_size: int) -> tuple[Path, dict]:
    """One fresh training run of fold 0, kept as ``scratch/fold_0_PRECISION_N_steps`` (reused when finished)."""
    fold = work / raw.name / "models" / CONFIGURATION / "fold_0"
    kept = scratch / f"fold_0_{precision}_{iterations}_steps"
    summary_file = kept / "training_summary.json"
    if not (summary_file.is_file() and read_json(summary_file)["iterations_done"] == iterations):
        shutil.rmtree(fold, ignore_errors=True)
        shutil.rmtree(kept, ignore_errors=True)
        autoseg("train", str(raw), CONFIGURATION, "0", "--work-dir", str(work), "--device", "cpu", "--seed", "0",
                "--epochs", "1", "--iterations-per-epoch", str(iterations), "--validation-iterations", "0",
                "--no-validation-prediction", "--batch-size", str(batch_size), "--precision", precision,
                log=scratch / f"train_{precision}.log")
        shutil.move(fold, kept)
    summary = read_json(summary_file)
    return kept, {"iterations": summary["iterations_done"], "training_seconds": summary["elapsed_seconds"],
                  "seconds_per_step": summary["elapsed_seconds"] / max(1, summary["iterations_done"]),
                  "load_average_after": load_average()}


def predict_and_score(raw: Path, work: Path, scratch: Path, trained: Path, *, precision: str,
                      cases: list[str], images: Path) -> dict:
    """Predict ``images`` with the model of ``trained`` in ``precision``; Dice per class and foreground mean."""
    fold = work / raw.name / "models" / CONFIGURATION / "fold_0"
    shutil.rmtree(fold, ignore_errors=True)
    shutil.copytree(trained, fold)
    output = scratch / f"predictions_{trained.name}_{precision}"
    shutil.rmtree(output, ignore_errors=True)
    started = time.monotonic()
    autoseg("predict", "-i", str(images), "-o", str(output), "-m", str(work / raw.name), "-c", CONFIGURATION,
            "-f", "0", "--device", "cpu", "--precision", precision, "--no-postprocessing", "--no-tta",
            log=scratch / f"predict_{trained.name}_{precision}.log")
    seconds = time.monotonic() - started
    targets, ignore_label = targets_from_dataset_json(raw / "dataset.json")
    summary = evaluate_folders(output, raw / "labelsTr", targets=targets, ignore_label=ignore_label, cases=cases,
                               with_surface_metrics=False)
    per_class = summary.dice_per_class
    return {"dice": per_class, "mean_dice": summary.foreground_dice, "predict_seconds": seconds}


def link_images(raw: Path, cases: list[str], destination: Path) -> Path:
    """A folder of symbolic links to the validation cases' images (nothing is copied)."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for case in cases:
        name = f"{case}_0000.nii.gz"
        (destination / name).symlink_to(raw / "imagesTr" / name)
    return destination


def print_table(results: dict) -> None:
    print(f"\n{'trained in':<10} {'s/step':>7} {'load':>5}  {'predicted in':<12} {'mean Dice':>9}")
    for trained, result in results.items():
        for predicted, scored in result["predictions"].items():
            print(f"{trained:<10} {result['seconds_per_step']:>7.2f} {result['load_average_after']:>5.2f}  "
                  f"{predicted:<12} {scored['mean_dice']:>9.4f}")
    float32, bfloat16 = results["float32"], results["bfloat16"]
    print(f"training in bfloat16 minus float32 (both predicted in float32): "
          f"{bfloat16['predictions']['float32']['mean_dice'] - float32['predictions']['float32']['mean_dice']:+.4f}; "
          f"speed-up {float32['seconds_per_step'] / bfloat16['seconds_per_step']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="Dataset004_Hippocampus")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=7, help="nnU-Net's Hippocampus batch (default 7)")
    add_datasets_root_argument(parser)
    parser.add_argument("--scratch", type=Path, default=scratch_folder("autoseg_precision"),
                        help="plan, preprocessed data, models and predictions (preprocessing is reused)")
    parser.add_argument("--speed-only", action="store_true", help="train both precisions, predict nothing")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    require_datasets(args.datasets_root, [args.dataset])
    raw = args.datasets_root / args.dataset
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    work = scratch / "autoseg_work"
    folder = prepare(raw, work, scratch)
    results = {}
    for precision in PRECISIONS:
        print(f"training in {precision}, {args.iterations} steps at batch {args.batch_size} "
              f"(load {load_average():.2f}) ...", flush=True)
        trained, results[precision] = train(raw, work, scratch, precision=precision, iterations=args.iterations,
                                            batch_size=args.batch_size)
        if args.speed_only:
            continue
        cases = read_json(folder / "splits.json")[0]["val"]  # written by the first training run
        images = link_images(raw, cases, scratch / "validation_images")
        results[precision]["predictions"] = {
            predicted: predict_and_score(raw, work, scratch, trained, precision=predicted, cases=cases,
                                         images=images)
            for predicted in PRECISIONS
        }
    kind = "precision_speed" if args.speed_only else "precision"
    if args.speed_only:
        cases = []
        print("seconds per step: " + ", ".join(f"{name} {result['seconds_per_step']:.2f}" for name, result in
                                               results.items()))
    else:
        print_table(results)
    out = args.out or REPOSITORY / "benchmarks" / "results" / f"{kind}_{args.dataset}.json"
    write_json(out, {
        "command": f"python benchmarks/precision.py --iterations {args.iterations} --batch-size {args.batch_size}"
                   + (" --speed-only" if args.speed_only else ""),
        "provenance": provenance(), "dataset": args.dataset, "configuration": CONFIGURATION, "fold": 0,
        "iterations": args.iterations, "batch_size": args.batch_size, "seed": 0,
        "dataset_folder": relative_to_repository(raw), "validation_cases": cases, "results": results,
    })
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
