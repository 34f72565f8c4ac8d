"""Behaviour unchanged by a refactor: the same plans, losses and predictions from an earlier checkout and this one,
and the same speed, measured in one run.

    python benchmarks/refactor_equivalence.py --old-tree ../autoseg-before [--steps plans,losses,predictions,timings]

``--old-tree`` is a checkout of the code before the change (``git worktree add ../autoseg-before COMMIT``). Each
command runs as its own process with ``PYTHONPATH`` set to one tree, both sharing one throughput cache:

- plans: ``autoseg plan`` on Hippocampus and HC18, without and with ``--time-budget 15m`` (the budget's clock frozen
  at the command's start, so that the seconds left do not depend on how long fingerprinting took): plans.json and
  fingerprint.json compared byte for byte;
- losses: the same seed, 2 epochs of 5 steps of Hippocampus 3d_fullres fold 0 from one preprocessed folder: the
  logged losses compared exactly;
- predictions: the old tree's model predicts 10 Hippocampus images with each tree, by torch and by its ONNX export
  (exported by the old tree): label maps and geometry compared exactly;
- timings: preprocess, train (2 epochs of 5 steps) and predict, old and new interleaved as whole processes; the
  median ratio new / old per command.

Writes ``benchmarks/results/refactor_equivalence.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from locations import add_datasets_root_argument, folder, require_datasets, scratch_folder
from provenance import REPOSITORY, provenance

HIPPOCAMPUS, HC18 = "Dataset004_Hippocampus", "Dataset018_HC18"
STEPS = ("plans", "losses", "predictions", "timings")
# With FREEZE_CLOCK the run's budget clock (the modules that read it: the plan command and the budget) stands still
# at the command's start, and everything else keeps real time.
FROZEN_CLOCK = (
    "import importlib, os, runpy, sys, time, types\n"
    "if os.environ.get('FREEZE_CLOCK'):\n"
    "    frozen = types.SimpleNamespace(**vars(time)); start = time.monotonic(); frozen.monotonic = lambda: start\n"
    "    for name in ('autoseg.commands.plan', 'autoseg.pipeline.budget'):\n"
    "        importlib.import_module(name).time = frozen\n"
    "sys.argv = ['autoseg', *sys.argv[1:]]\n"
    "runpy.run_module('autoseg', run_name='__main__')\n"
)
TRAIN = ["--epochs", "2", "--iterations-per-epoch", "5", "--validation-iterations", "2", "--seed", "0",
         "--deterministic", "--no-validation-prediction", "--device", "cpu"]
PREDICTED_CASES = 10


def autoseg(tree: Path, arguments: list[str], *, cache: Path, log: Path, freeze: bool = False) -> float:
    """Run ``autoseg ARGUMENTS`` with ``tree`` on the path; the wall seconds. Raises with the log's tail on failure."""
    environment = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(cache), "AUTOSEG_PROGRESS": "none"}
    environment.pop("FREEZE_CLOCK", None)
    if freeze:
        environment["FREEZE_CLOCK"] = "1"
    started = time.perf_counter()
    with log.open("a") as output:
        result = subprocess.run([sys.executable, "-c", FROZEN_CLOCK, *arguments], cwd=tree, env=environment,
                                stdout=output, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"autoseg {' '.join(arguments)} failed in {tree}:\n{log.read_text()[-3000:]}")
    return seconds


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def compare_plans(trees: dict[str, Path], datasets: Path, scratch: Path, cache: Path) -> list[dict]:
    rows = []
    autoseg(trees["new"], ["plan", str(datasets / HIPPOCAMPUS), "--time-budget", "15m", "--work-dir",
                           str(scratch / "measure")], cache=cache, log=scratch / "measure.log")  # fills the cache
    for dataset in (HIPPOCAMPUS, HC18):
        for budget in (None, "15m"):
            files = {}
            for name, tree in trees.items():
                work = scratch / f"plans_{name}_{dataset}_{budget}"
                shutil.rmtree(work, ignore_errors=True)
                extra = ["--time-budget", budget, "--device", "cpu"] if budget else []
                autoseg(tree, ["plan", str(datasets / dataset), "--work-dir", str(work), *extra], cache=cache,
                        log=scratch / f"plans_{name}.log", freeze=True)
                files[name] = {file: digest(work / dataset / file) for file in ("plans.json", "fingerprint.json")}
            rows.append({"dataset": dataset, "time_budget": budget, "old": files["old"], "new": files["new"],
                         "identical": files["old"] == files["new"]})
            print(f"plans {dataset} budget {budget}: {'identical' if rows[-1]['identical'] else 'DIFFERENT'}")
    return rows


def prepared_work(tree: Path, datasets: Path, scratch: Path, cache: Path) -> Path:
    """A working folder with Hippocampus planned and 3d_fullres preprocessed (by ``tree``)."""
    work = scratch / "prepared"
    if not (work / HIPPOCAMPUS / "preprocessed" / "3d_fullres").is_dir():
        shutil.rmtree(work, ignore_errors=True)
        for stage in (["plan"], ["preprocess", "-c", "3d_fullres"]):
            autoseg(tree, [stage[0], str(datasets / HIPPOCAMPUS), *stage[1:], "--work-dir", str(work)], cache=cache,
                    log=scratch / "prepare.log")
    return work


def trained_copy(tree: Path, prepared: Path, work: Path, datasets: Path, cache: Path, log: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(prepared, work)
    return autoseg(tree, ["train", str(datasets / HIPPOCAMPUS), "3d_fullres", "0", "--work-dir", str(work), *TRAIN],
                   cache=cache, log=log)


def losses_of(work: Path) -> list[float]:
    log = work / HIPPOCAMPUS / "models" / "3d_fullres" / "fold_0" / "log.jsonl"
    return [record["train_loss"] for record in map(json.loads, log.read_text().splitlines()) if "train_loss" in record]


def compare_losses(trees: dict[str, Path], prepared: Path, datasets: Path, scratch: Path, cache: Path) -> dict:
    losses = {}
    for name, tree in trees.items():
        trained_copy(tree, prepared, scratch / f"trained_{name}", datasets, cache, scratch / f"train_{name}.log")
        losses[name] = losses_of(scratch / f"trained_{name}")
    identical = losses["old"] == losses["new"] and bool(losses["old"])
    print(f"losses: {'identical' if identical else 'DIFFERENT'} {losses}")
    return {**losses, "identical": identical}


def label_maps(folder_path: Path) -> dict[str, tuple]:
    maps = {}
    for path in sorted(folder_path.glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        maps[path.name] = (sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return maps


def same_maps(first: dict[str, tuple], second: dict[str, tuple]) -> bool:
    return first.keys() == second.keys() and len(first) > 0 and all(
        np.array_equal(first[name][0], second[name][0]) and first[name][1:] == second[name][1:] for name in first)


def compare_predictions(trees: dict[str, Path], datasets: Path, scratch: Path, cache: Path) -> dict:
    model = scratch / "trained_old" / HIPPOCAMPUS
    inputs = scratch / "predict_inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    for image in sorted((datasets / HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:PREDICTED_CASES]:
        shutil.copy(image, inputs / image.name)
    onnx = scratch / "onnx_export"
    shutil.rmtree(onnx, ignore_errors=True)
    autoseg(trees["old"], ["export-onnx", str(model), str(onnx), "-c", "3d_fullres", "-f", "0"], cache=cache,
            log=scratch / "export.log")
    outputs = {}
    for engine, source in (("torch", model), ("onnx", onnx)):
        for name, tree in trees.items():
            output = scratch / f"predicted_{engine}_{name}"
            shutil.rmtree(output, ignore_errors=True)
            selection = ["-c", "3d_fullres", "-f", "0"] if engine == "torch" else []
            autoseg(tree, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(source), "--engine", engine,
                           "--device", "cpu", *selection], cache=cache, log=scratch / f"predict_{name}.log")
            outputs[(engine, name)] = label_maps(output)
    result = {engine: same_maps(outputs[(engine, "old")], outputs[(engine, "new")]) for engine in ("torch", "onnx")}
    print(f"predictions identical: {result}")
    return {"cases": PREDICTED_CASES, "identical": result}


def compare_timings(trees: dict[str, Path], prepared: Path, datasets: Path, scratch: Path, cache: Path,
                    repeats: int) -> dict:
    """Old and new interleaved (old, new, old, new, ...) so that a drifting machine slows both alike."""
    inputs, model = scratch / "predict_inputs", scratch / "trained_old" / HIPPOCAMPUS
    commands = {
        "preprocess": lambda work: ["preprocess", str(datasets / HIPPOCAMPUS), "-c", "3d_fullres", "--overwrite",
                                    "--work-dir", str(work)],
        "train": None,
        "predict": lambda work: ["predict", "-i", str(inputs), "-o", str(work / "out"), "-m", str(model), "-c",
                                 "3d_fullres", "-f", "0", "--device", "cpu"],
    }
    seconds: dict[str, dict[str, list[float]]] = {command: {"old": [], "new": []} for command in commands}
    for _ in range(repeats):
        for command, arguments in commands.items():
            for name, tree in trees.items():
                work = scratch / f"timing_{name}"
                log = scratch / f"timing_{name}.log"
                if command == "train":
                    seconds[command][name].append(trained_copy(tree, prepared, work, datasets, cache, log))
                    continue
                if command == "preprocess" and not work.is_dir():
                    shutil.copytree(prepared, work)
                shutil.rmtree(work / "out", ignore_errors=True)
                seconds[command][name].append(autoseg(tree, arguments(work), cache=cache, log=log))
    summary = {}
    for command, runs in seconds.items():
        ratios = [new / old for old, new in zip(runs["old"], runs["new"], strict=True)]
        summary[command] = {"old_seconds": runs["old"], "new_seconds": runs["new"],
                            "median_ratio_new_over_old": round(statistics.median(ratios), 3)}
        print(f"{command}: median new/old {summary[command]['median_ratio_new_over_old']} "
              f"(old {statistics.median(runs['old']):.1f} s, new {statistics.median(runs['new']):.1f} s)")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-tree", type=folder, required=True, help="checkout of the code before the change")
    parser.add_argument("--new-tree", type=folder, default=REPOSITORY, help="checkout of the code after it")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command per tree")
    add_datasets_root_argument(parser)
    args = parser.parse_args()
    require_datasets(args.datasets_root, [HIPPOCAMPUS, HC18])
    steps = args.steps.split(",")
    trees = {"old": args.old_tree, "new": args.new_tree}
    scratch = scratch_folder("refactor_equivalence")
    cache = scratch / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    result: dict = {"provenance": provenance(), "old_commit": _commit(args.old_tree), "steps": steps}
    if "plans" in steps:
        result["plans"] = compare_plans(trees, args.datasets_root, scratch, cache)
    if {"losses", "predictions", "timings"} & set(steps):
        prepared = prepared_work(trees["new"], args.datasets_root, scratch, cache)
        result["losses"] = compare_losses(trees, prepared, args.datasets_root, scratch, cache)
        if "predictions" in steps:
            result["predictions"] = compare_predictions(trees, args.datasets_root, scratch, cache)
        if "timings" in steps:
            result["timings"] = compare_timings(trees, prepared, args.datasets_root, scratch, cache, args.repeats)
    path = REPOSITORY / "benchmarks" / "results" / "refactor_equivalence.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPOSITORY)}")


def _commit(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()


if __name__ == "__main__":
    main()
