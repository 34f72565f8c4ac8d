"""Arguments several commands share: the working folder (``--work-dir``), what a run trains (``--configs``,
``--folds``)."""

from __future__ import annotations

import argparse

from autoseg.errors import UserError
from autoseg.pipeline.run import DEFAULT_FOLDS
from autoseg.records.work_folder import DEFAULT_WORK_DIR, WORK_DIR_ENVIRONMENT_VARIABLE


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        default=None,
        help=f"working folder for all outputs (default: ${WORK_DIR_ENVIRONMENT_VARIABLE} or ./{DEFAULT_WORK_DIR})",
    )


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """``--configs`` and ``--folds``: what a run trains, and so what a time budget plans for (``run``, ``plan``)."""
    parser.add_argument("--configs", nargs="+", default=None, metavar="CONFIG",
                        help="configurations to train (default: every planned one; the cascade only with all five "
                             "folds)")
    parser.add_argument("--folds", nargs="+", type=int, default=None, metavar="K",
                        help="cross-validation folds to train (default: 0 1 2 3 4, fewer when a budget cannot pay "
                             "for all)")


def requested_folds(args: argparse.Namespace) -> tuple[tuple[int, ...], bool]:
    """(folds, whether the user named them) from ``--folds``; every fold when none is named."""
    folds = args.folds if args.folds is not None else list(DEFAULT_FOLDS)
    if any(fold not in DEFAULT_FOLDS for fold in folds):
        raise UserError(f"--folds take values 0-4, got {folds}.")
    return tuple(dict.fromkeys(folds)), args.folds is not None
