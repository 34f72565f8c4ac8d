"""Benchmark: does the per-case quality estimate find the failed predictions? (issue 28)

For the model of a finished ``autoseg run`` (only read), on the validation cases of the folds its recipe uses (never
seen in training):

1. writes the cases clean and under ``benchmarks/appearance_shift.py``'s scanner-like shifts at each ``--severity``
   (so that real failures exist), and segments every set with ``autoseg predict``'s defaults (mirroring, the
   recipe, post-processing, quality estimate on); the estimate's cost is the ratio of the fastest of
   ``--cost-rounds`` alternating clean predictions with and without it;
2. scores every case (Dice, mean over the foreground classes, a class absent from both = 1) and rates every score
   of ``quality.csv`` as a failure detector, clean and shifted cases together: AURC (lower is better; the constant
   score's is the mean risk), AUROC for failures (Dice < 0.8 x median), Spearman correlation with Dice;
3. measures the calibrated expected Dice's mean absolute error two ways: with the model's own calibration (fitted by
   model selection on the clean cross-validation, so the clean cases are in-sample) and cross-fitted (the calibration
   refitted on the clean rows of half the cases, evaluated on all rows of the other half, and the other way round).

Methods (columns of ``quality.csv``): ``default`` (the raw score autoseg uses), ``mirror`` (mirror agreement, mean
over classes), ``piece`` (largest-piece share), ``volume`` (volume against the training range), ``folds`` (pairwise
fold Dice, several folds only), ``confidence`` (mean softmax confidence over the image: the trivial baseline),
``confidence_fg`` (over the predicted foreground), ``entropy_fg`` (minus the mean entropy there) and ``constant``.

Usage:

    python benchmarks/failure_detection.py --model WORK/Dataset004_Hippocampus --modality mri \\
        --out SCRATCH [--severity 2] [--cases 40] [--output benchmarks/results/FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from appearance_shift import SHIFTS, _rng, mean_dice  # noqa: E402
from provenance import provenance, relative_to_repository  # noqa: E402

from autoseg.evaluation.failure_detection import (  # noqa: E402
    aurc,
    failure_auroc,
    failures,
    fit_monotone_map,
    spearman,
)
from autoseg.inference.loading import load_ensemble  # noqa: E402
from autoseg.inference.model_source import ModelSource  # noqa: E402
from autoseg.inference.options import PredictionOptions  # noqa: E402
from autoseg.inference.quality_table import QUALITY_FILE, read_quality_table  # noqa: E402
from autoseg.io.images import read_image, write_image  # noqa: E402
from autoseg.records.inference_recipe import InferenceRecipe  # noqa: E402
from autoseg.records.quality_model import QualityModel  # noqa: E402
from autoseg.records.splits import read_splits  # noqa: E402
from autoseg.records.work_folder import WorkFolder  # noqa: E402

METHODS = ("default", "mirror", "piece", "volume", "folds", "confidence", "confidence_fg", "entropy_fg", "constant")


def validation_cases(work: WorkFolder, recipe: InferenceRecipe, limit: int | None) -> list:
    """The validation cases of the recipe's folds (first member), sorted; at most ``limit``."""
    splits = read_splits(work.splits)
    folds = recipe.models[0].folds or ()
    identifiers = sorted({case for fold in folds if str(fold) != "all" for case in splits[int(fold)]["val"]})
    dataset = work.read_dataset()
    return [dataset.case(identifier) for identifier in identifiers[:limit]]


def write_condition(cases, folder: Path, *, modality: str, severity: float, seed: int) -> None:
    """The cases' images, shifted at ``severity`` (0: clean copies), as ``CASE_XXXX.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for channel, path in enumerate(case.images):
            image = read_image(path)
            array = image.array.astype(np.float32)
            if severity > 0:
                array = SHIFTS[modality](image.array, _rng(seed, f"{case.identifier}/{channel}"),
                                         severity=severity, spacing=image.geometry.spacing)
            write_image(array, image.geometry, folder / f"{case.identifier}_{channel:04d}.nii.gz")


def predict(model: Path, cases, inputs: Path, output: Path, *, quality: bool) -> float:
    """Segment ``inputs`` as ``autoseg predict`` does; returns seconds per case."""
    models = load_ensemble(ModelSource.checkpoints(model), PredictionOptions(device="cpu", quality=quality))
    images = [[inputs / f"{case.identifier}_{c:04d}.nii.gz" for c in range(len(case.images))] for case in cases]
    outputs = [output / f"{case.identifier}.nii.gz" for case in cases]
    started = time.perf_counter()
    models.predict_files(images, outputs, workers=0, progress=False)
    return (time.perf_counter() - started) / len(cases)


def _mean_of(row: dict, prefix: str) -> float | None:
    values = [float(value) for key, value in row.items() if key.startswith(prefix) and value not in ("", None)]
    return float(np.mean(values)) if values else None


def method_scores(row: dict, model: QualityModel | None, values: dict[str, int]) -> dict[str, float | None]:
    """Every method's score of one ``quality.csv`` row (higher = more trusted); ``values``: label name -> value."""
    volume_factors = []
    for name, value in values.items():
        volume = row.get(f"volume_mm3_{name}")
        factor = model.volume_factor(value, float(volume)) if model is not None and volume else None
        if factor is not None:
            volume_factors.append(factor)
    entropy = row.get("entropy_foreground")
    confidence_fg = row.get("confidence_foreground")
    return {
        "default": float(row["raw_score"]),
        "mirror": _mean_of(row, "mirror_"),
        "piece": _mean_of(row, "piece_"),
        "volume": float(np.mean(volume_factors)) if volume_factors else None,
        "folds": _mean_of(row, "folds_"),
        "confidence": float(row["confidence"]),
        "confidence_fg": float(confidence_fg) if confidence_fg else 0.0,
        "entropy_fg": -float(entropy) if entropy else -1.0,
        "constant": 0.5,
    }


def detector_table(records: list[dict]) -> dict[str, dict]:
    """AURC, AUROC and Spearman of every method over ``records`` (rows with ``dice`` and ``scores``), plus the
    oracle's AURC (cases ranked by their true Dice: the least any score can reach) and each method's share of the
    reachable gain ``(constant - method) / (constant - oracle)``."""
    dice = [record["dice"] for record in records]
    oracle, constant = aurc(dice, dice), aurc([0.5] * len(dice), dice)
    table = {"oracle": {"aurc": oracle, "auroc": failure_auroc(dice, dice), "spearman": 1.0}}
    for method in METHODS:
        scores = [record["scores"][method] for record in records]
        if any(score is None for score in scores):
            continue
        value = aurc(scores, dice)
        table[method] = {"aurc": value, "auroc": failure_auroc(scores, dice), "spearman": spearman(scores, dice),
                         "share_of_reachable_gain": (constant - value) / (constant - oracle)}
    return table


def analyse(records: list[dict], model: QualityModel | None, seconds: dict[str, float]) -> dict:
    """The summary of one benchmark's rows: detectors (all rows, clean rows), calibration errors, the flag."""
    table = detector_table(records)
    failed = failures([record["dice"] for record in records])
    flagged = np.array([record["flagged"] for record in records])
    return {
        "cases": len({record["case"] for record in records}), "rows": len(records), "failures": int(failed.sum()),
        "failure_threshold_dice": float(0.8 * np.median([record["dice"] for record in records])),
        "detectors": table,
        "detectors_clean_only": detector_table([record for record in records if record["condition"] == "clean"]),
        "calibration_mae": calibration_errors(records, model),
        "flag": {"threshold": model.flag_below if model else None, "flagged": int(flagged.sum()),
                 "failures_flagged": int((flagged & failed).sum()),
                 "successes_flagged": int((flagged & ~failed).sum())},
        "seconds_per_case": seconds,
        "quality_cost_fraction": (seconds["clean_with_quality"] / seconds["clean_without_quality"] - 1.0
                                  if "clean_with_quality" in seconds else None),
        "aurc_ratio_default_to_constant": table["default"]["aurc"] / table["constant"]["aurc"],
        "aurc_ratio_oracle_to_constant": table["oracle"]["aurc"] / table["constant"]["aurc"],
    }


def print_summary(summary: dict) -> None:
    print(f"{'method':14s} {'AURC':>7s} {'AUROC':>7s} {'Spearman':>9s} {'gain':>6s}")
    for method, values in summary["detectors"].items():
        auroc = "-" if values["auroc"] is None else f"{values['auroc']:.3f}"
        rho = "-" if values["spearman"] is None else f"{values['spearman']:.3f}"
        gain = values.get("share_of_reachable_gain")
        print(f"{method:14s} {values['aurc']:7.4f} {auroc:>7s} {rho:>9s} {'-' if gain is None else f'{gain:6.2f}'}")
    print(json.dumps({key: summary[key] for key in ("failures", "calibration_mae", "flag", "quality_cost_fraction",
                                                   "aurc_ratio_default_to_constant", "aurc_ratio_oracle_to_constant")},
                     indent=1))


def calibration_errors(records: list[dict], model: QualityModel | None) -> dict:
    """Mean absolute error of the expected Dice: the model's own calibration (all rows, shifted rows, each
    condition), and cross-fitted on halves of the cases."""
    errors = {}
    if model is not None and model.calibrated:
        expected = np.array([model.expected_dice(record["scores"]["default"]) for record in records])
        dice = np.array([record["dice"] for record in records])
        shifted = np.array([record["condition"] != "clean" for record in records])
        errors["model_calibration"] = float(np.abs(expected - dice).mean())
        errors["model_calibration_shifted_only"] = float(np.abs(expected - dice)[shifted].mean())
        conditions = [record["condition"] for record in records]
        errors["model_calibration_per_condition"] = {
            condition: float(np.abs(expected - dice)[[entry == condition for entry in conditions]].mean())
            for condition in dict.fromkeys(conditions)
        }
    errors["cross_fitted"] = cross_fitted_error(records)
    return errors


def cross_fitted_error(records: list[dict]) -> float:
    """The calibration refitted on the clean rows of half the cases, as model selection fits it, and scored on every
    row of the other half."""
    dice = np.array([record["dice"] for record in records])
    cases = sorted({record["case"] for record in records})
    halves = [set(cases[0::2]), set(cases[1::2])]
    predicted = np.zeros(len(records))
    for fit_half, test_half in ((halves[0], halves[1]), (halves[1], halves[0])):
        fit = [record for record in records if record["case"] in fit_half and record["condition"] == "clean"]
        knots, values = fit_monotone_map([record["scores"]["default"] for record in fit],
                                         [record["dice"] for record in fit])
        refitted = QualityModel(raw_scores=knots, expected=values)
        for index, record in enumerate(records):
            if record["case"] in test_half:
                predicted[index] = refitted.expected_dice(record["scores"]["default"])
    return float(np.abs(predicted - dice).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="the working folder of a finished run (only read)")
    parser.add_argument("--modality", required=True, choices=sorted(SHIFTS))
    parser.add_argument("--out", required=True, type=Path, help="scratch folder for inputs and predictions")
    parser.add_argument("--severity", type=float, nargs="+", default=[2.0],
                        help="shift severities (default 2, appearance_shift.py's own default)")
    parser.add_argument("--cases", type=int, default=None, help="at most this many validation cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default: benchmarks/results/...)")
    parser.add_argument("--cost-rounds", type=int, default=2,
                        help="rounds of clean prediction without and with the estimate, alternating (cost = ratio "
                             "of each one's fastest)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, steadier timings than 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = WorkFolder.at(args.model)
    recipe = InferenceRecipe.read(work.inference_recipe)
    model = recipe.quality
    cases = validation_cases(work, recipe, args.cases)
    dataset = work.read_dataset()
    values = {name: value for name, value in dataset.labels.items() if name not in ("background", "ignore")}
    labels = sorted(values.values())
    records, seconds = [], {}
    for severity in [0.0, *args.severity]:
        condition = "clean" if severity == 0 else f"shift_{severity:g}"
        inputs = args.out / "inputs" / condition
        write_condition(cases, inputs, modality=args.modality, severity=severity, seed=args.seed)
        output = args.out / "predictions" / condition
        seconds[condition] = predict(args.model, cases, inputs, output, quality=True)
        if severity == 0:  # the estimate's cost: alternate without / with, keep each one's fastest round
            rounds = [(predict(args.model, cases, inputs, args.out / "predictions" / "plain", quality=False),
                       predict(args.model, cases, inputs, args.out / "predictions" / "timed", quality=True))
                      for _ in range(args.cost_rounds)]
            seconds["clean_without_quality"] = min(without for without, _ in rounds)
            seconds["clean_with_quality"] = min(with_quality for _, with_quality in rounds)
        rows = {row["case"]: row for row in read_quality_table(output / QUALITY_FILE)}
        for case in cases:
            reference = read_image(case.label).array
            predicted = read_image(output / f"{case.identifier}.nii.gz").array
            records.append({"case": case.identifier, "condition": condition,
                            "dice": mean_dice(predicted, reference, labels),
                            "expected_dice": float(rows[case.identifier]["expected_dice"]),
                            "flagged": rows[case.identifier]["flagged"] == "1",
                            "reasons": rows[case.identifier]["reasons"],
                            "scores": method_scores(rows[case.identifier], model, values)})
        condition_dice = statistics.mean(record["dice"] for record in records if record["condition"] == condition)
        print(f"{condition:10s} mean Dice {condition_dice:.4f} ({seconds[condition]:.2f} s per case)", flush=True)
    summary = analyse(records, model, seconds)
    print_summary(summary)
    output = args.output or REPOSITORY / "benchmarks" / "results" / f"failure_detection_{dataset.name}.json"
    settings = {key: relative_to_repository(value) if isinstance(value, Path) else value
                for key, value in vars(args).items()}
    output.write_text(json.dumps({"provenance": provenance(), "settings": settings, "summary": summary,
                                  "records": records}, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
