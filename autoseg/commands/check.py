"""``autoseg check DATASET``: verify a raw dataset and report every problem (exit code 2 when any is an error)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.data.check import check_dataset
from autoseg.data.raw_folder import scan_raw_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (with dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--workers", type=int, default=2, help="processes reading files in parallel (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    root = Path(args.dataset)
    problems = check_dataset(root, workers=args.workers, progress=not args.no_progress)
    for problem in sorted(problems, key=lambda p: p.severity != "error"):
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    dataset, _ = scan_raw_dataset(root)
    counted = (
        f"{len(dataset.training_cases)} training and {len(dataset.test_cases)} test case(s)"
        if dataset is not None else "no cases"
    )
    verdict = "FAILED" if errors else "OK"
    print(f"{verdict}: {root.resolve().name}: checked {counted}: {errors} error(s), {warnings} warning(s).")
    return 2 if errors else 0
