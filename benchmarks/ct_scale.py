"""Benchmark: a whole ``autoseg run`` on CT-scale data within a time budget, then prediction of a 512x512x300 volume
(issue 27, "CT-scale data on a laptop").

The dataset is the CT-like phantom of ``benchmarks/ct_phantom.py`` (20 volumes of 512x512 x 90-220 slices, liver,
kidneys, spleen and small liver lesions, one further 512x512x300 volume in ``imagesTs/`` with its label in
``labelsTs/``). The harness

1. runs ``python -m autoseg run DATASET --time-budget B --work-dir W --no-progress`` as a subprocess, stamps every
   line of its output with the seconds since the start as it arrives and cuts the run into stages at the
   ``== stage ==`` markers the run prints (``autoseg/pipeline/run.py``);
2. records the run's peak memory (the largest single process, from the kernel's accounting of the finished process
   tree, and the largest sum over the process group at one moment, sampled every 0.2 s), the bytes of the
   preprocessed folder (total and per case), the steps each fold trained (``training_summary.json``), the
   cross-validation Dice per class of every candidate model selection compared and of the one it chose
   (``inference.json``), and the wall time against the budget;
3. predicts ``imagesTs/`` with the run's model in a separate process (``python -m autoseg predict -i ... -o ...
   -m W/DATASET``, with test-time mirroring unless the run's advice says ``--no-tta``), records its seconds and
   peak memory, and scores the label map against ``labelsTs/`` (Dice per class).

``--start-only`` instead times ``python -m autoseg plan DATASET --time-budget B`` (check + fingerprint + plan) alone,
in a fresh working folder. Results go to ``benchmarks/results/ct_scale.json`` (``--output``) with the provenance of
``benchmarks/provenance.py``; a table is printed.

Usage:

    python benchmarks/ct_scale.py [--dataset FOLDER] [--time-budget 30m] [--work-dir DIR] [--fresh]
        [--skip-run | --predict-only | --start-only] [--output FILE]

``--dataset`` defaults to ``autoseg_ct/Dataset601_CTPhantom`` and ``--work-dir`` to ``autoseg_ct_work`` in the
system's temporary folder (``benchmarks/locations.py``). A working folder that already holds the dataset is not
run over (the run would reuse its preprocessing and checkpoints): pass ``--fresh`` to delete it first, or
``--skip-run`` to measure what it holds. ``--skip-run`` collects the results of the existing run (its stages from
the log this benchmark wrote, ``ct_scale_run.log``) and predicts; ``--predict-only`` only predicts and scores.
Run it under ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from locations import folder, path_for_result, scratch_folder
from preprocess import process_group_rss
from provenance import REPOSITORY, provenance

from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.training_summary import TrainingSummary
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.durations import parse_time_budget

DEFAULT_DATASET = scratch_folder("autoseg_ct") / "Dataset601_CTPhantom"
DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results" / "ct_scale.json"
STAGE_MARKER = "== "


def timed_command(command: list[str], *, log: Path | None = None, echo: bool = True) -> dict:
    """Run ``command`` in its own process group, stamping each output line with the seconds since the start.

    Returns the exit status, wall seconds, the stamped lines, the peak resident memory of the largest single process
    (``wait4``'s accounting, which covers every reaped descendant) and the largest sum over the process group at
    one moment (sampled).
    """
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
                               start_new_session=True, text=True, errors="replace", bufsize=1)
    peak_sum = [0]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak_sum[0] = max(peak_sum[0], process_group_rss(process.pid)[0])
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines: list[tuple[float, str]] = []
    stream = log.open("w") if log else None
    assert process.stdout is not None
    for line in process.stdout:
        stamp = time.perf_counter() - start
        lines.append((round(stamp, 2), line.rstrip("\n")))
        text = f"[{stamp:8.1f}s] {line.rstrip()}"
        if echo:
            print(text, flush=True)
        if stream:
            stream.write(text + "\n")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    running.clear()
    sampler.join()
    if stream:
        stream.close()
    return {"command": [path_for_result(part) if os.sep in part else part for part in command],
            "returncode": process.returncode, "wall_s": round(wall, 2),
            "peak_rss_largest_process_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_sum_mb": round(peak_sum[0] / 2**20, 1), "lines": lines}


def stage_durations(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds from each ``== stage ==`` marker to the next (the last to ``end``); ``start`` before the first."""
    marks = [(stamp, text.strip()[3:-3].strip()) for stamp, text in lines
             if text.strip().startswith(STAGE_MARKER) and text.strip().endswith(" ==")]
    marks = [(0.0, "start"), *marks]
    durations: dict[str, float] = {}
    for (stamp, name), following in zip(marks, [*marks[1:], (end, "")], strict=True):
        durations[name] = round(durations.get(name, 0.0) + following[0] - stamp, 2)
    return durations


def validation_seconds(lines: list[tuple[float, str]]) -> list[float]:
    """Seconds from each fold's ``training finished`` line to its ``validation cases`` line: predicting the fold's
    validation cases (part of the fold's stage)."""
    seconds, finished = [], None
    for stamp, text in lines:
        if text.startswith("training finished"):
            finished = stamp
        elif text.startswith("validation cases") and finished is not None:
            seconds.append(round(stamp - finished, 2))
            finished = None
    return seconds


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def preprocessed_sizes(work: WorkFolder) -> dict:
    """Bytes of every configuration's preprocessed folder, total and per case (files grouped by the case's name)."""
    sizes: dict = {"total_bytes": folder_bytes(work.preprocessed_root) if work.preprocessed_root.is_dir() else 0}
    for configuration in sorted(work.preprocessed_root.glob("*")) if work.preprocessed_root.is_dir() else []:
        per_case: dict[str, int] = {}
        for entry in configuration.rglob("*"):
            if entry.is_file():
                case = entry.name.split(".")[0].removesuffix("_seg")
                per_case[case] = per_case.get(case, 0) + entry.stat().st_size
        values = list(per_case.values())
        sizes[configuration.name] = {
            "total_bytes": sum(values), "cases": len(values),
            "mean_case_bytes": int(np.mean(values)) if values else 0, "max_case_bytes": max(values, default=0),
            "per_case_bytes": dict(sorted(per_case.items())),
        }
    return sizes


def model_sizes(work: WorkFolder) -> dict:
    """Bytes of the model folders: checkpoints, and the validation probabilities (``CASE.npz``) model selection
    ensembles (a fold's ``validation/`` and a configuration's ``crossval/`` may hard-link the same files)."""
    files = [entry for entry in work.models.rglob("*") if entry.is_file()] if work.models.is_dir() else []
    unique = {(entry.stat().st_dev, entry.stat().st_ino): entry for entry in files}
    probabilities = [entry for entry in unique.values() if entry.suffix == ".npz"]
    return {"total_bytes": sum(entry.stat().st_size for entry in unique.values()),
            "checkpoint_bytes": sum(entry.stat().st_size for entry in unique.values() if entry.suffix == ".pt"),
            "probability_files": len(probabilities),
            "probability_bytes": sum(entry.stat().st_size for entry in probabilities)}


def training_results(work: WorkFolder) -> list[dict]:
    """Steps, epochs and seconds of every trained fold (``training_summary.json``)."""
    results = []
    for path in work.training_summaries():
        summary = TrainingSummary.read(path)
        results.append({"configuration": summary.configuration_name, "fold": summary.fold,
                        "steps": summary.iterations_done, "epochs": summary.epochs_completed,
                        "seconds": summary.elapsed_seconds, "best_ema_pseudo_dice": summary.best_ema_pseudo_dice})
    return results


def cross_validation(work: WorkFolder) -> dict | None:
    """The model selection's choice and the cross-validation Dice per class of every candidate (``inference.json``)."""
    recipe = InferenceRecipe.read(work.inference_recipe)
    if recipe is None:
        return None
    return {
        "selected": recipe.selected, "models": [{"configuration": model.configuration, "folds": list(model.folds or ())}
                                                for model in recipe.models],
        "postprocessing": recipe.postprocessing, "foreground_dice": recipe.cross_validation_dice,
        "foreground_dice_after_postprocessing": recipe.cross_validation_dice_after_postprocessing,
        "candidates": {candidate.name: {"foreground_dice": candidate.foreground_dice,
                                        "dice_per_class": candidate.dice_per_class}
                       for candidate in recipe.candidates},
    }


def dice_per_class(prediction: Path, reference: Path, labels: dict[str, int]) -> dict[str, float | None]:
    """Dice of each foreground label (None where both maps lack it)."""
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    if predicted.shape != truth.shape:
        raise RuntimeError(f"{prediction}: shape {predicted.shape} differs from the reference's {truth.shape}")
    scores: dict[str, float | None] = {}
    for name, value in labels.items():
        if value == 0:
            continue
        a, b = predicted == value, truth == value
        total = int(a.sum()) + int(b.sum())
        scores[name] = round(2.0 * int((a & b).sum()) / total, 4) if total else None
    return scores


def run_recommends_no_tta(run_log: Path) -> bool:
    """Whether the run's closing advice (``autoseg predict ... --no-tta``, printed when mirroring a median case would
    take longer than the run allows for) says to predict without test-time mirroring."""
    if not run_log.is_file():
        return False
    return any("autoseg predict" in line and "--no-tta" in line for line in run_log.read_text().splitlines())


def predict_test_volume(dataset: Path, work: WorkFolder, output: Path, *, mirroring: bool = True) -> dict:
    """Predict ``imagesTs/`` with the run's model in a separate process (test-time ``mirroring`` as the run
    recommends); seconds, peak memory, Dice per class."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "autoseg", "predict", "-i", str(dataset / "imagesTs"), "-o", str(output),
               "-m", str(work.root), *([] if mirroring else ["--no-tta"])]
    result = timed_command(command)
    result["test_time_mirroring"] = mirroring
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    result["dice_per_case"] = {}
    if result["returncode"] == 0:
        for reference in sorted((dataset / "labelsTs").glob("*.nii.gz")):
            prediction = output / reference.name
            result["dice_per_case"][reference.name.split(".")[0]] = (
                dice_per_class(prediction, reference, labels) if prediction.is_file() else None)
    result["lines"] = result["lines"][-40:]
    return result


def run_pipeline(dataset: Path, work_dir: Path, budget: str, log: Path) -> dict:
    """The whole ``autoseg run`` with stage durations."""
    command = [sys.executable, "-m", "autoseg", "run", str(dataset), "--time-budget", budget, "--work-dir",
               str(work_dir), "--no-progress"]
    return with_stages(timed_command(command, log=log), budget, log)


def run_from_log(log: Path, budget: str) -> dict | None:
    """What ``run_pipeline`` records, read back from the stamped log of a run this benchmark started earlier (for
    ``--skip-run``; the peak memory is not in the log). None without a log."""
    if not log.is_file():
        return None
    stamped = [line.partition("s] ") for line in log.read_text().splitlines() if line.startswith("[")]
    lines = [(float(stamp.strip("[ ")), text) for stamp, _, text in stamped]
    wall = lines[-1][0] if lines else 0.0
    return with_stages({"returncode": None, "wall_s": wall, "lines": lines, "read_from_log": True}, budget, log)


def with_stages(result: dict, budget: str, log: Path) -> dict:
    """``result`` (a run's stamped lines and wall seconds) with its stages, validation seconds and budget."""
    result["stages_s"] = stage_durations(result["lines"], result["wall_s"])
    result["validation_prediction_s"] = validation_seconds(result["lines"])
    result["budget_s"] = parse_time_budget(budget)
    result["over_budget_s"] = round(result["wall_s"] - result["budget_s"], 1)
    result["log"] = path_for_result(log)
    result["lines"] = result["lines"][-60:]
    return result


def start_only(dataset: Path, work_dir: Path, budget: str) -> dict:
    """``autoseg plan --time-budget`` alone in a fresh working folder: check + fingerprint + plan."""
    scratch = work_dir / "start_only"
    shutil.rmtree(scratch, ignore_errors=True)
    result = timed_command([sys.executable, "-m", "autoseg", "plan", str(dataset), "--time-budget", budget,
                            "--work-dir", str(scratch)])
    result["lines"] = result["lines"][-60:]
    return result


def print_table(results: dict) -> None:
    """A short human-readable summary of ``results``."""
    rows: list[tuple[str, str]] = []
    for key in ("start_only", "run", "predict"):
        part = results.get(key)
        if part:
            rows.append((f"{key} wall", f"{part['wall_s']:.0f} s (exit {part['returncode']})"))
            if "peak_rss_largest_process_mb" in part:  # not in a run read back from its log
                rows.append((f"{key} peak memory", f"{part['peak_rss_largest_process_mb']:.0f} MB largest process, "
                                                   f"{part['peak_rss_sum_mb']:.0f} MB process group"))
    run = results.get("run") or {}
    if run:
        rows.append(("budget", f"{run['budget_s']:.0f} s, over by {run['over_budget_s']:+.0f} s"))
        rows += [(f"  stage {name}", f"{seconds:.0f} s") for name, seconds in run["stages_s"].items()]
        rows += [("  of which validation prediction", ", ".join(f"{seconds:.0f} s" for seconds in
                                                             run["validation_prediction_s"]))]
    sizes = results.get("preprocessed")
    if sizes:
        rows.append(("preprocessed", f"{sizes['total_bytes'] / 2**20:.0f} MB"))
        rows += [(f"  {name}", f"{entry['cases']} cases, mean {entry['mean_case_bytes'] / 2**20:.1f} MB, "
                               f"max {entry['max_case_bytes'] / 2**20:.1f} MB per case")
                 for name, entry in sizes.items() if isinstance(entry, dict)]
    models = results.get("models")
    if models:
        rows.append(("models", f"{models['total_bytes'] / 2**20:.0f} MB, of which checkpoints "
                               f"{models['checkpoint_bytes'] / 2**20:.0f} MB and {models['probability_files']} "
                               f"validation probability files {models['probability_bytes'] / 2**20:.0f} MB"))
    rows += [(f"train {entry['configuration']} fold {entry['fold']}",
              f"{entry['steps']} steps, {entry['epochs']} epochs, {entry['seconds'] or 0:.0f} s")
             for entry in results.get("training", [])]
    selection = results.get("cross_validation")
    if selection:
        chosen = selection["candidates"].get(selection["selected"] or "", {})
        rows.append((f"CV Dice ({selection['selected']})", _dice_text(chosen.get("dice_per_class", {}))))
    for case, scores in ((results.get("predict") or {}).get("dice_per_case") or {}).items():
        rows.append((f"test Dice {case}", _dice_text(scores or {})))
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _dice_text(scores: dict) -> str:
    return ", ".join(f"{name} {'-' if value is None else f'{value:.3f}'}" for name, value in scores.items())


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=folder, default=DEFAULT_DATASET)
    parser.add_argument("--time-budget", default="30m")
    parser.add_argument("--work-dir", type=folder, default=scratch_folder("autoseg_ct_work"))
    parser.add_argument("--fresh", action="store_true", help="delete the dataset's working folder before the run")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--skip-run", action="store_true", help="measure the run already in the working folder")
    mode.add_argument("--predict-only", action="store_true", help="only predict imagesTs/ and score it")
    mode.add_argument("--start-only", action="store_true", help="only time `autoseg plan --time-budget`")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    dataset, work_dir = arguments.dataset, arguments.work_dir
    if not (dataset / "dataset.json").is_file():
        print(f"{dataset}: no dataset.json; generate it with python benchmarks/ct_phantom.py", file=sys.stderr)
        return 2
    work = WorkFolder.for_dataset(work_dir, dataset)
    results: dict = {"benchmark": "ct_scale", "provenance": provenance(), "dataset": path_for_result(dataset),
                     "work_dir": path_for_result(work_dir), "time_budget": arguments.time_budget}
    work_dir.mkdir(parents=True, exist_ok=True)
    if arguments.start_only:
        results["start_only"] = start_only(dataset, work_dir, arguments.time_budget)
    else:
        if not (arguments.skip_run or arguments.predict_only):
            if work.root.exists() and not arguments.fresh:
                print(f"{work.root} exists: pass --fresh to delete it, or --skip-run to measure it", file=sys.stderr)
                return 2
            shutil.rmtree(work.root, ignore_errors=True)
            results["run"] = run_pipeline(dataset, work_dir, arguments.time_budget, work_dir / "ct_scale_run.log")
        elif arguments.skip_run:
            results["run"] = run_from_log(work_dir / "ct_scale_run.log", arguments.time_budget)
        if not arguments.predict_only:
            results["preprocessed"] = preprocessed_sizes(work)
            results["models"] = model_sizes(work)
            results["training"] = training_results(work)
            results["cross_validation"] = cross_validation(work)
        if (dataset / "imagesTs").is_dir() and work.inference_recipe.is_file():
            mirroring = not run_recommends_no_tta(work_dir / "ct_scale_run.log")
            results["predict"] = predict_test_volume(dataset, work, work_dir / "ct_scale_predictions",
                                                     mirroring=mirroring)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\nwrote {path_for_result(arguments.output)}")
    failed = [key for key in ("start_only", "run", "predict") if (results.get(key) or {}).get("returncode")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
