"""Benchmark: seconds per case of the torch and ONNX engines of ``autoseg predict`` on a trained model, and their Dice.

Three engines segment the same N real cases of a dataset with the same trained model (same folds, test-time
mirroring, step size and post-processing): torch with its default precision (``auto``: bfloat16 autocast on CPUs
with native bfloat16; on other CPUs ``auto`` is float32 and this line is left out), torch in float32, and
onnxruntime (float32) on the graphs ``autoseg export-onnx`` writes. Everything runs in this process with
``workers=0``, so a case's time covers reading, preprocessing, the sliding window, resampling back and writing,
but not the start-up of a command. Each engine predicts one warm-up case first; then the cases are interleaved
(case 1 with every engine, case 2, ...) with the engine order rotating, because the machine is shared and the load
drifts. The 1-minute load average is printed.

The Dice columns compare each engine's label maps with those of torch float32, per foreground label (mean and
minimum over cases and labels), next to the number of voxels whose label differs: onnxruntime should reproduce
torch float32 almost exactly.

Usage:

    python benchmarks/onnx_speed.py --model WORK/Dataset004_Hippocampus \
        --dataset ../shared/datasets/Dataset004_Hippocampus --cases 10 --threads 1 [-c 3d_fullres] [-f 0] \
        [--checkpoint final] [--onnx-folder DIR] [--no-tta]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.data.raw_folder import load_raw_dataset
from autoseg.evaluation.metrics import overlap_metrics
from autoseg.inference.loading import load_ensemble
from autoseg.inference.model_source import ModelSource
from autoseg.inference.onnx_export import export_onnx_model
from autoseg.inference.options import PredictionOptions
from autoseg.io.images import file_ending, read_image
from autoseg.records.onnx_export import is_onnx_export
from autoseg.utils.precision import resolve_precision
from autoseg.utils.threads import set_torch_threads

REFERENCE = "torch float32"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - not available on this platform
        return "?"


def compare_label_maps(
    reference_folder: Path, folder: Path, names: list[str], labels: list[int]
) -> tuple[list[float], int, int]:
    """Dice of every (case, foreground label) present in either label map; differing and total voxels."""
    values = []
    differing = total = 0
    for name in names:
        reference = read_image(reference_folder / name).array
        prediction = read_image(folder / name).array
        differing += int(np.count_nonzero(prediction != reference))
        total += reference.size
        for label in labels:
            dice = overlap_metrics(prediction == label, reference == label)["dice"]
            if dice is not None:
                values.append(dice)
    return values, differing, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="trained model folder (WORK/<dataset>)")
    parser.add_argument("--dataset", required=True, type=Path, help="raw dataset whose imagesTr cases are segmented")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="threads of torch and onnxruntime (default 1)")
    parser.add_argument("-c", "--configuration", default=None)
    parser.add_argument("-f", "--folds", nargs="+", default=None)
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument("--onnx-folder", type=Path, default=None,
                        help="an existing export of --model (default: export into a temporary folder, timed)")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the outputs (default: temporary)")
    args = parser.parse_args()

    set_torch_threads(args.threads)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="onnx_speed_"))
    scratch.mkdir(parents=True, exist_ok=True)
    onnx_folder = args.onnx_folder
    if onnx_folder is None or not is_onnx_export(onnx_folder):
        onnx_folder = onnx_folder or scratch / "onnx"
        started = time.perf_counter()
        export_onnx_model(args.model, onnx_folder, configuration=args.configuration, folds=args.folds,
                          checkpoint=args.checkpoint)
        print(f"export-onnx: {time.perf_counter() - started:.1f} s -> {onnx_folder}")

    source = ModelSource.checkpoints(args.model, configuration=args.configuration, folds=args.folds,
                                     checkpoint=args.checkpoint)
    torch_options = PredictionOptions(tta=not args.no_tta, device="cpu")
    auto_precision = resolve_precision("auto", torch.device("cpu"))
    engines = {}
    if auto_precision != "float32":  # else the default is the float32 line itself
        engines["torch auto"] = load_ensemble(source, dataclasses.replace(torch_options, precision="auto"))
    engines[REFERENCE] = load_ensemble(source, dataclasses.replace(torch_options, precision="float32"))
    engines["onnxruntime"] = load_ensemble(
        ModelSource.onnx_export(onnx_folder, configuration=args.configuration, folds=args.folds),
        PredictionOptions(tta=not args.no_tta, threads=args.threads),
    )
    dataset = load_raw_dataset(args.dataset)
    cases = dataset.training_cases[: args.cases + 1]
    warm_up, cases = cases[0], cases[1:]
    names = [case.identifier + file_ending(case.images[0]) for case in cases]
    print(f"{len(cases)} cases of {dataset.name} (+1 warm-up), {engines[REFERENCE].description}, "
          f"{'with' if not args.no_tta else 'without'} mirroring, {args.threads} thread(s), "
          f"torch auto = {auto_precision}, load {load_average()}")

    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for name, models in engines.items():
        models.predict_files([warm_up.images], [scratch / "warm_up" / name / "case.nii.gz"], progress=False)
    order = list(engines)
    for index, (case, output_name) in enumerate(zip(cases, names, strict=True)):
        for name in order[index % len(order):] + order[: index % len(order)]:
            started = time.perf_counter()
            engines[name].predict_files([case.images], [scratch / name / output_name], progress=False)
            seconds[name].append(time.perf_counter() - started)
        print(f"  {case.identifier}: " + ", ".join(f"{name} {seconds[name][-1]:.2f} s" for name in engines)
              + f" (load {load_average()})")

    labels = [int(label) for label in dataset.foreground_labels]
    reference_median = statistics.median(seconds[REFERENCE])
    print(f"\n| engine | median s/case | mean s/case | time / {REFERENCE} | Dice vs {REFERENCE}: mean | min "
          "| voxels differing |")
    print("|---|---|---|---|---|---|---|")
    for name in engines:
        median = statistics.median(seconds[name])
        label = f"torch {auto_precision} (auto)" if name == "torch auto" else name
        if name == REFERENCE:
            dice_text = "(reference) | | "
        else:
            dice, differing, total = compare_label_maps(scratch / REFERENCE, scratch / name, names, labels)
            dice_summary = f"{np.mean(dice):.5f} | {np.min(dice):.5f}" if dice else "n/a (no foreground) | n/a"
            dice_text = f"{dice_summary} | {differing} of {total}"
        print(f"| {label} | {median:.2f} | {statistics.mean(seconds[name]):.2f} | {median / reference_median:.2f} | "
              f"{dice_text} |")
    print(f"\noutputs in {scratch}; load {load_average()}")


if __name__ == "__main__":
    main()
