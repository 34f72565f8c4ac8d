"""What finished `autoseg run --time-budget` runs trained and scored: one result file for runs compared side by side.

For each run folder (``WORK/<dataset>`` of a finished ``autoseg run``) it reads the compute record of plans.json
(budget, predicted steps, the recipe), every trained fold's training summary (steps done, seconds) and validation
summary (cross-validation Dice per case), and writes per run: the mean CV Dice, the lowest case and the number of
cases below 0.8, the steps done against the predicted ones. The runs themselves are the user's commands, e.g.
``autoseg run ../shared/datasets/Dataset004_Hippocampus --time-budget 15m --work-dir SCRATCH``; this script only
reads their folders, so runs made earlier (another commit, another recipe) can be compared with new ones.

Example:
    python benchmarks/budget_runs.py --run "reference recipe=OLD/Dataset004_Hippocampus" \\
        --run "short-schedule recipe=NEW/Dataset004_Hippocampus" --out benchmarks/results/budget_runs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import provenance

from autoseg.utils.files import write_json

FAILURE_DICE = 0.8


def summarise_run(folder: Path) -> dict:
    """The compute record's prediction and each trained fold's steps and cross-validation Dice."""
    plans = json.loads((folder / "plans.json").read_text())
    compute = plans.get("compute") or {}
    folds = []
    for summary_file in sorted((folder / "models").glob("*/fold_*/training_summary.json")):
        training = json.loads(summary_file.read_text())
        validation_file = summary_file.parent / "validation" / "summary.json"
        if not validation_file.is_file():
            continue
        validation = json.loads(validation_file.read_text())
        dice = [statistics.mean(metrics["dice"] for metrics in case["metrics"].values())
                for case in validation["per_case"]]
        configuration = summary_file.parent.parent.name
        predicted = compute.get("per_configuration", {}).get(configuration, {})
        folds.append({
            "configuration": configuration,
            "fold": training["fold"],
            "steps_done": training["iterations_done"],
            "steps_predicted": predicted.get("expected_iterations"),
            "training_seconds": round(training["elapsed_seconds"], 1),
            "recipe": predicted.get("recipe", {}).get("settings", {}),
            "cv_mean_dice": round(validation["foreground_mean"]["dice"], 4),
            "per_class_dice": {values["name"]: round(values["dice"], 4) for values in validation["mean"].values()},
            "lowest_case_dice": round(min(dice), 4),
            f"cases_below_{FAILURE_DICE}": sum(value < FAILURE_DICE for value in dice),
            "cases": len(dice),
        })
    return {"budget_seconds": compute.get("budget_seconds"), "folds": folds}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                        help="a label and the WORK/<dataset> folder of a finished autoseg run (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="result JSON file")
    parser.add_argument("--note", default="", help="what the runs were (commands, machine state)")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    runs = {}
    for item in args.run:
        label, _, folder = item.partition("=")
        runs[label] = {"dataset": Path(folder).name, **summarise_run(Path(folder))}
    record = {"provenance": provenance(), "note": args.note, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    for label, run in runs.items():
        for fold in run["folds"]:
            print(f"{label}: {run['dataset']} {fold['configuration']} fold {fold['fold']}: CV Dice "
                  f"{fold['cv_mean_dice']:.4f}, lowest case {fold['lowest_case_dice']:.3f}, "
                  f"{fold[f'cases_below_{FAILURE_DICE}']} below {FAILURE_DICE}, {fold['steps_done']} steps "
                  f"({fold['steps_predicted']} predicted)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
