"""Collect a configuration's fold validations into one evaluated cross-validation set.

Each fold predicts its held-out cases into ``models/CONFIG/fold_K/validation/`` (label maps and, for ensembling,
``CASE.npz`` probabilities in the input's grid). Together the folds cover every training case once; this module
links them into ``models/CONFIG/crossval/`` and evaluates the whole set against ``ground_truth/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.evaluation.folders import evaluate_against_ground_truth, label_files_by_case
from autoseg.inference.quality_table import QUALITY_FILE, read_quality_table, write_quality_table
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.splits import read_splits
from autoseg.records.work_folder import WorkFolder


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link (no extra disk) where the file system allows it, else copy; replaces a stale destination."""
    temporary = destination.with_name(f".{destination.name}.partial")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, destination)


def collect_cross_validation(
    work_folder: WorkFolder, configuration_name: str, folds: Sequence[int], *, workers: int = 2, progress: bool = True
) -> EvaluationSummary:
    """Gather the validation predictions of ``folds`` and evaluate them as one set; returns the summary.

    Raises:
        UserError: a fold has not predicted its validation cases (train it first).
    """
    destination = work_folder.crossval(configuration_name)
    destination.mkdir(parents=True, exist_ok=True)
    splits = read_splits(work_folder.splits)
    cases: list[str] = []
    quality_rows: list[dict[str, str]] = []
    for fold in folds:
        validation = work_folder.validation(configuration_name, fold)
        expected = splits[fold]["val"]
        found = label_files_by_case(validation) if validation.is_dir() else {}
        missing = sorted(set(expected) - set(found))
        if missing:
            raise UserError(
                f"{validation}: fold {fold} of {configuration_name} lacks validation predictions "
                f"(e.g. {missing[0]}); train it with `autoseg train` first."
            )
        for identifier in expected:
            label_file = found[identifier]
            _link_or_copy(label_file, destination / label_file.name)
            probabilities = label_file.with_name(f"{identifier}.npz")
            if probabilities.is_file():
                _link_or_copy(probabilities, destination / probabilities.name)
        cases.extend(expected)
        quality_rows += [row for row in read_quality_table(validation / QUALITY_FILE) if row["case"] in expected]
    (destination / QUALITY_FILE).unlink(missing_ok=True)  # rows of folds no longer collected must not linger
    if quality_rows:
        write_quality_table(destination / QUALITY_FILE, quality_rows)
    return evaluate_against_ground_truth(work_folder, destination, cases=sorted(cases), workers=workers,
                                         progress=progress)


def read_crossval_summary(work_folder: WorkFolder, configuration_name: str) -> EvaluationSummary | None:
    return EvaluationSummary.read_if_present(work_folder.crossval(configuration_name))
