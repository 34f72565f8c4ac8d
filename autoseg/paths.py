"""Where autoseg keeps its work: one folder per dataset inside a working folder.

The working folder comes from ``--work-dir``, else the ``AUTOSEG_WORK_DIR`` environment variable, else
``./autoseg_work``. Nothing requires a global environment variable.

Layout of ``WORK/<dataset folder name>/``::

    dataset.json            the raw dataset description (autoseg.data.dataset.RawDataset)
    fingerprint.json        autoseg.fingerprint
    plans.json              autoseg.planning
    splits.json             cross-validation folds
    preprocessed/CONFIG/    training-ready cases
    ground_truth/           label maps in their original geometry, for validation
    models/CONFIG/fold_K/   checkpoints, training log, progress.png, validation predictions
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

WORK_DIR_ENVIRONMENT_VARIABLE = "AUTOSEG_WORK_DIR"
DEFAULT_WORK_DIR = "autoseg_work"


def resolve_work_dir(work_dir: str | os.PathLike[str] | None) -> Path:
    """The working folder chosen by the user, the environment, or the default, as an absolute path."""
    chosen = work_dir or os.environ.get(WORK_DIR_ENVIRONMENT_VARIABLE) or DEFAULT_WORK_DIR
    return Path(chosen).expanduser().resolve()


def dataset_work_dir(work_dir: str | os.PathLike[str] | None, dataset_root: str | os.PathLike[str]) -> Path:
    """The folder holding every artifact for one raw dataset: ``WORK/<dataset folder name>``."""
    return resolve_work_dir(work_dir) / Path(dataset_root).resolve().name


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        default=None,
        help=f"working folder for all outputs (default: ${WORK_DIR_ENVIRONMENT_VARIABLE} or ./{DEFAULT_WORK_DIR})",
    )
