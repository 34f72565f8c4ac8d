"""``autoseg evaluate PRED_FOLDER REF_FOLDER``: per-case, per-class metrics written as summary.json and metrics.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.errors import UserError
from autoseg.evaluation.folders import METRICS_CSV_FILE_NAME, SUMMARY_FILE_NAME, evaluate_folders
from autoseg.evaluation.metrics import DEFAULT_TOLERANCE_MM
from autoseg.evaluation.targets import targets_from_dataset_json, targets_from_label_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prediction_folder", help="folder of predicted label maps (CASE.nii.gz, ...)")
    parser.add_argument("reference_folder", help="folder of reference label maps with the same case names")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--dataset-json", default=None, help="dataset.json whose labels (classes, regions, ignore) are evaluated"
    )
    labels.add_argument(
        "--labels", type=int, nargs="+", default=None, help="label values to evaluate (default: all found)"
    )
    parser.add_argument("--ignore-label", type=int, default=None, help="reference value excluded from evaluation")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_MM,
        help=f"normalised surface Dice tolerance in mm (default {DEFAULT_TOLERANCE_MM})",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument(
        "--no-surface-metrics", action="store_true", help="skip HD95/ASSD/NSD (overlap metrics only, faster)"
    )
    parser.add_argument(
        "-o", "--output", default=None, help="output folder for summary.json and metrics.csv (default: PRED_FOLDER)"
    )


def run(args: argparse.Namespace) -> int:
    if args.tolerance < 0:
        raise UserError(f"--tolerance must be >= 0 mm, got {args.tolerance}.")
    targets, ignore_label = None, args.ignore_label
    if args.dataset_json is not None:
        targets, declared_ignore = targets_from_dataset_json(args.dataset_json)
        ignore_label = declared_ignore if ignore_label is None else ignore_label
    elif args.labels is not None:
        targets = targets_from_label_values(args.labels)
        if not targets:
            raise UserError("--labels must name at least one non-zero label value.")
    output = Path(args.output if args.output is not None else args.prediction_folder)
    summary = evaluate_folders(
        args.prediction_folder,
        args.reference_folder,
        targets=targets,
        ignore_label=ignore_label,
        tolerance_mm=args.tolerance,
        workers=max(1, args.workers),
        output_folder=output,
        with_surface_metrics=not args.no_surface_metrics,
    )
    print(f"{len(summary.per_case)} cases evaluated")
    print(f"{'target':<20} {'dice':>7} {'iou':>7} {'hd95_mm':>9} {'assd_mm':>9} {'nsd':>7}")
    rows = [(f"{entry['name']} ({key})", entry) for key, entry in summary.mean.items()]
    rows.append(("foreground mean", summary.foreground_mean))
    for name, entry in rows:
        cells = [_format(entry[metric], width) for metric, width in (
            ("dice", 7), ("iou", 7), ("hd95_mm", 9), ("assd_mm", 9), ("nsd", 7))]
        print(f"{name:<20} {' '.join(cells)}")
    print(f"wrote {output / SUMMARY_FILE_NAME} and {output / METRICS_CSV_FILE_NAME}")
    return 0


def _format(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"
