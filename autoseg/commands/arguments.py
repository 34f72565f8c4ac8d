"""Arguments several commands share: the working folder (``--work-dir``)."""

from __future__ import annotations

import argparse

from autoseg.records.work_folder import DEFAULT_WORK_DIR, WORK_DIR_ENVIRONMENT_VARIABLE


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        default=None,
        help=f"working folder for all outputs (default: ${WORK_DIR_ENVIRONMENT_VARIABLE} or ./{DEFAULT_WORK_DIR})",
    )
