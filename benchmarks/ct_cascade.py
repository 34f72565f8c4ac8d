"""Benchmark: the cascade end to end at CT size (issue 27, item 6): ``3d_lowres`` + ``3d_cascade_fullres`` trained by
``autoseg run`` within a time budget, model selection, ``export-model`` -> ``import-model`` into a fresh folder, and
prediction of ``imagesTs/`` with the original working folder and with the imported model.

The dataset is the CT-like phantom of ``benchmarks/ct_phantom.py``. The harness

1. runs ``python -m autoseg run DATASET --work-dir W --time-budget B --configs 3d_lowres 3d_cascade_fullres
   --no-progress`` as a subprocess (stages, wall time and peak memory as ``benchmarks/ct_scale.py`` measures them);
2. records both stages' plans (spacing, patch, network width), the steps every fold trained, the model selection's
   choice and the cross-validation Dice per class of every candidate (``inference.json``);
3. when the run's model selection chose a model without the cascade (``3d_lowres`` alone, say), selects again
   among the cascade alone (``autoseg find-best --configs 3d_cascade_fullres``), as a user who wants the cascade would;
4. exports the selected model (``export-model``), imports the archive into a fresh folder (``import-model``) and
   predicts ``imagesTs/`` with both (``predict``, test-time mirroring as the run recommended), each in its own
   process with its seconds and peak memory;
5. compares the two label maps voxel for voxel (they must be identical) and each map's geometry (size, spacing,
   origin, direction) with its input image's, and scores the map against ``labelsTs/`` (Dice per class); predicts
   once more with both, writing the class probabilities (``--save-probabilities``), and compares those value for
   value (two label maps may agree by chance, e.g. all background; the probabilities only if the models do).

Results go to ``benchmarks/results/ct_cascade.json`` (``--output``) with the provenance of
``benchmarks/provenance.py``; a table is printed. The exit status is 1 when a command fails or the two predictions
differ.

Usage:

    python benchmarks/ct_cascade.py [--dataset FOLDER] [--time-budget 50m] [--work-dir DIR] [--fresh]
        [--skip-run] [--output FILE] [--note TEXT]

``--dataset`` defaults to ``autoseg_ct/Dataset601_CTPhantom`` and ``--work-dir`` to ``autoseg_ct_cascade_work`` in the
system's temporary folder (``benchmarks/locations.py``). A working folder that already holds the dataset is not run
over: pass ``--fresh`` to delete it first, or ``--skip-run`` to measure the run it holds. Run it under ``nice`` on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ct_scale import (
    DEFAULT_DATASET,
    cross_validation,
    dice_per_class,
    preprocessed_sizes,
    stage_durations,
    timed_command,
    training_results,
    validation_seconds,
)
from locations import folder, path_for_result, scratch_folder
from provenance import REPOSITORY, provenance

from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.durations import parse_time_budget

DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results" / "ct_cascade.json"
CASCADE = ("3d_lowres", "3d_cascade_fullres")


def run_cascade(dataset: Path, work_dir: Path, budget: str, log: Path) -> dict:
    """``autoseg run --configs 3d_lowres 3d_cascade_fullres`` with stage durations."""
    command = [sys.executable, "-m", "autoseg", "run", str(dataset), "--time-budget", budget, "--work-dir",
               str(work_dir), "--configs", *CASCADE, "--no-progress"]
    result = timed_command(command, log=log)
    result["stages_s"] = stage_durations(result["lines"], result["wall_s"])
    result["validation_prediction_s"] = validation_seconds(result["lines"])
    result["budget_s"] = parse_time_budget(budget)
    result["over_budget_s"] = round(result["wall_s"] - result["budget_s"], 1)
    result["recommends_no_tta"] = any("--no-tta" in text for _, text in result["lines"]
                                      if text.strip().startswith("autoseg predict"))
    result["log"] = path_for_result(log)
    result["lines"] = result["lines"][-60:]
    return result


def stage_plans(work: WorkFolder) -> dict:
    """Spacing, patch, batch and first-stage width of both cascade stages, and the budget's reasons."""
    plans = load_plans(work.plans)
    described = {}
    for name in CASCADE:
        if name in plans.names:
            configuration = plans.configuration(name)
            described[name] = {"spacing_mm": [round(value, 4) for value in configuration.spacing],
                               "patch_size": list(configuration.patch_size),
                               "batch_size": configuration.batch_size,
                               "features_per_stage": list(configuration.network.features_per_stage),
                               "previous_stage": configuration.previous_stage}
    compute = plans.get("compute") or {}
    return {"configurations": described, "compute_reasons": compute.get("reasons"),
            "compute_per_configuration": compute.get("per_configuration")}


def share_model(work: WorkFolder, scratch: Path) -> dict:
    """``export-model`` the run's folder, then ``import-model`` the archive into a fresh folder."""
    archive, imported = scratch / "cascade_model.zip", scratch / "imported_model"
    archive.unlink(missing_ok=True)
    shutil.rmtree(imported, ignore_errors=True)
    exported = timed_command([sys.executable, "-m", "autoseg", "export-model", str(work.root), str(archive)])
    result: dict = {"export": _short(exported)}
    if exported["returncode"] == 0:
        result["archive_bytes"] = archive.stat().st_size
        with zipfile.ZipFile(archive) as opened:
            result["archive_checkpoints"] = sorted(name for name in opened.namelist() if name.endswith(".pt"))
        result["import"] = _short(timed_command([sys.executable, "-m", "autoseg", "import-model", str(archive),
                                                 str(imported)]))
    result["imported_folder"] = imported
    return result


def predict(dataset: Path, model: Path, output: Path, *, no_tta: bool, probabilities: bool = False) -> dict:
    """``autoseg predict`` of ``imagesTs/`` with ``model`` in its own process: seconds and peak memory."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "autoseg", "predict", "-i", str(dataset / "imagesTs"), "-o", str(output),
               "-m", str(model), *(["--no-tta"] if no_tta else []),
               *(["--save-probabilities"] if probabilities else [])]
    return _short(timed_command(command))


def compare_probabilities(original: Path, imported: Path) -> dict:
    """Per case, the two predictions' class probabilities (``--save-probabilities``) compared value for value: a
    label map can be identical by chance (all background), the probabilities only if the models are."""
    cases = {}
    for first in sorted(original.glob("*.npz")):
        second = imported / first.name
        if not second.is_file():
            cases[first.stem] = {"identical": False, "missing": "imported"}
            continue
        with np.load(first) as left_file, np.load(second) as right_file:
            left, right = left_file["probabilities"], right_file["probabilities"]
        same_shape = left.shape == right.shape
        cases[first.stem] = {
            "identical": bool(same_shape and np.array_equal(left, right)),
            "max_abs_difference": float(np.abs(left.astype(np.float64) - right).max()) if same_shape else None,
            "shape": list(left.shape),
            "largest_foreground_probability": float(left[1:].max()) if left.shape[0] > 1 else None,
        }
    return cases


def compare(dataset: Path, original: Path, imported: Path) -> dict:
    """Per test case: the two label maps voxel for voxel, the geometry against the input, Dice against labelsTs."""
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    ending = json.loads((dataset / "dataset.json").read_text())["file_ending"]
    cases = {}
    for image_path in sorted((dataset / "imagesTs").glob(f"*_0000{ending}")):
        case = image_path.name[: -len(f"_0000{ending}")]
        first, second = original / f"{case}{ending}", imported / f"{case}{ending}"
        if not (first.is_file() and second.is_file()):
            cases[case] = {"predicted": False}
            continue
        image, left, right = (sitk.ReadImage(str(path)) for path in (image_path, first, second))
        a, b = sitk.GetArrayFromImage(left), sitk.GetArrayFromImage(right)
        reference = dataset / "labelsTs" / f"{case}{ending}"
        cases[case] = {
            "predicted": True,
            "identical_voxels": bool(a.shape == b.shape and np.array_equal(a, b)),
            "differing_voxels": int((a != b).sum()) if a.shape == b.shape else None,
            "identical_files": first.read_bytes() == second.read_bytes(),
            "geometry_matches_input": all(_same_geometry(image, label) for label in (left, right)),
            "size": list(left.GetSize()), "spacing_mm": [round(value, 4) for value in left.GetSpacing()],
            "labels_present": sorted(int(value) for value in np.unique(a)),
            "dice_per_class": dice_per_class(first, reference, labels) if reference.is_file() else None,
        }
    return cases


def _same_geometry(image: sitk.Image, label: sitk.Image) -> bool:
    return (image.GetSize() == label.GetSize()
            and np.allclose(image.GetSpacing(), label.GetSpacing(), rtol=0, atol=1e-5)
            and np.allclose(image.GetOrigin(), label.GetOrigin(), rtol=0, atol=1e-4)
            and np.allclose(image.GetDirection(), label.GetDirection(), rtol=0, atol=1e-6))


def without_machine_paths(value, replacements: dict[str, str]):
    """``value`` (the results) with every folder of this machine in its strings replaced by a placeholder."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item, replacements) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_machine_paths(item, replacements) for item in value]
    if isinstance(value, str):
        for path, placeholder in replacements.items():
            value = value.replace(path, placeholder)
    return value


def _short(result: dict) -> dict:
    return {**result, "lines": result["lines"][-25:]}


def print_table(results: dict) -> None:
    rows: list[tuple[str, str]] = []
    run = results.get("run")
    if run:
        rows.append(("run", f"{run['wall_s']:.0f} s of {run['budget_s']:.0f} s budget (exit {run['returncode']}), "
                            f"peak {run['peak_rss_largest_process_mb']:.0f} MB largest process"))
        rows += [(f"  stage {name}", f"{seconds:.0f} s") for name, seconds in run["stages_s"].items()]
    for name, entry in (results.get("plans") or {}).get("configurations", {}).items():
        rows.append((f"plan {name}", f"spacing {entry['spacing_mm']} mm, patch {entry['patch_size']}, "
                                     f"batch {entry['batch_size']}, features {entry['features_per_stage'][0]}"))
    rows += [(f"train {entry['configuration']} fold {entry['fold']}",
              f"{entry['steps']} steps, {entry['seconds'] or 0:.0f} s") for entry in results.get("training", [])]
    selection = results.get("cross_validation")
    if selection:
        rows.append(("selected", str(selection["selected"])))
        for name, candidate in selection["candidates"].items():
            rows.append((f"  CV Dice {name}", ", ".join(f"{label} {value:.3f}" for label, value in
                                                        (candidate.get("dice_per_class") or {}).items())))
    for key in ("predict_original", "predict_imported"):
        part = results.get(key)
        if part:
            rows.append((key, f"{part['wall_s']:.0f} s (exit {part['returncode']}), peak "
                              f"{part['peak_rss_largest_process_mb']:.0f} MB largest process"))
    for case, entry in (results.get("comparison") or {}).items():
        rows.append((f"{case}", f"identical {entry.get('identical_voxels')}, geometry "
                                f"{entry.get('geometry_matches_input')}, Dice {entry.get('dice_per_class')}"))
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=folder, default=DEFAULT_DATASET)
    parser.add_argument("--time-budget", default="50m")
    parser.add_argument("--work-dir", type=folder, default=scratch_folder("autoseg_ct_cascade_work"))
    parser.add_argument("--fresh", action="store_true", help="delete the dataset's working folder before the run")
    parser.add_argument("--skip-run", action="store_true", help="measure the run already in the working folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--note", default="", help="a sentence for the result file (e.g. the machine was shared)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    dataset, work_dir = arguments.dataset, arguments.work_dir
    if not (dataset / "dataset.json").is_file():
        print(f"{dataset}: no dataset.json; generate it with python benchmarks/ct_phantom.py", file=sys.stderr)
        return 2
    work = WorkFolder.for_dataset(work_dir, dataset)
    results: dict = {"benchmark": "ct_cascade", "provenance": provenance(), "note": arguments.note,
                     "dataset": path_for_result(dataset), "work_dir": path_for_result(work_dir),
                     "time_budget": arguments.time_budget}
    work_dir.mkdir(parents=True, exist_ok=True)
    if not arguments.skip_run:
        if work.root.exists() and not arguments.fresh:
            print(f"{work.root} exists: pass --fresh to delete it, or --skip-run to measure it", file=sys.stderr)
            return 2
        shutil.rmtree(work.root, ignore_errors=True)
        results["run"] = run_cascade(dataset, work_dir, arguments.time_budget, work_dir / "ct_cascade_run.log")
    results["plans"] = stage_plans(work)
    results["preprocessed"] = preprocessed_sizes(work)
    results["training"] = training_results(work)
    results["cross_validation"] = cross_validation(work)
    failed = bool((results.get("run") or {}).get("returncode"))
    selected = (results["cross_validation"] or {}).get("models") or []
    if work.inference_recipe.is_file() and not any(model["configuration"] == CASCADE[1] for model in selected):
        # The run chose a model without the cascade (e.g. 3d_lowres alone): select among the cascade alone, as a
        # user who wants it would, so that what is exported, imported and predicted is the cascade.
        results["cascade_selection"] = _short(timed_command(
            [sys.executable, "-m", "autoseg", "find-best", str(dataset), "--work-dir", str(work_dir),
             "--configs", CASCADE[1]]))
        results["cross_validation_cascade"] = cross_validation(work)
    if work.inference_recipe.is_file():
        shared = share_model(work, work_dir)
        imported = shared.pop("imported_folder")
        results["sharing"] = shared
        no_tta = bool((results.get("run") or {}).get("recommends_no_tta"))
        results["test_time_mirroring"] = not no_tta
        original_output, imported_output = work_dir / "predicted_original", work_dir / "predicted_imported"
        results["predict_original"] = predict(dataset, work.root, original_output, no_tta=no_tta)
        if (shared.get("import") or {}).get("returncode") == 0:
            results["predict_imported"] = predict(dataset, imported, imported_output, no_tta=no_tta)
        results["comparison"] = compare(dataset, original_output, imported_output)
        for name, model in (("original", work.root), ("imported", imported)):
            results[f"predict_{name}_with_probabilities"] = predict(
                dataset, model, work_dir / f"probabilities_{name}", no_tta=no_tta, probabilities=True)
        results["probability_comparison"] = compare_probabilities(work_dir / "probabilities_original",
                                                                  work_dir / "probabilities_imported")
        failed = failed or any(part.get("returncode") for key, part in results.items()
                               if key.startswith("predict_") and isinstance(part, dict))
        identical = bool(results["comparison"]) and all(
            entry.get("identical_voxels") and entry.get("geometry_matches_input")
            for entry in results["comparison"].values()) and bool(results["probability_comparison"]) and all(
            entry["identical"] for entry in results["probability_comparison"].values())
        results["identical_after_export_import"] = identical
        failed = failed or not identical
    else:
        failed = True
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    # Longest first: the working folder may lie inside the dataset's parent or the other way round.
    replacements = dict(sorted({str(work_dir): "WORK", str(dataset): "DATASET", str(REPOSITORY): "."}.items(),
                               key=lambda item: -len(item[0])))
    results = without_machine_paths(results, replacements)
    arguments.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print_table(results)
    print(f"\nwrote {path_for_result(arguments.output)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
