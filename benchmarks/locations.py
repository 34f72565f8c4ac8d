"""Where the benchmarks find the shared datasets and the nnU-Net peer, where they keep scratch files, and how they
name a path in a result file.

No folder of one machine is written here: every default is relative to the project root or lies in the system's
temporary folder, and each can be replaced by an argument of the script or an environment variable:

- the shared datasets (a folder holding ``Dataset004_Hippocampus`` and ``Dataset018_HC18``): ``--datasets-root``,
  else ``$AUTOSEG_TEST_DATA`` (the variable the test suite reads too), else ``../shared/datasets`` beside the
  project root;
- nnU-Net v2's virtualenv: ``--nnunet-venv``, else ``$NNUNET_PEER_VENV``, else the virtualenv
  ``../shared/tools/nnunet-peer/setup.sh`` creates when given no folder (``nnunet-peer/venv`` in the system's
  temporary folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from provenance import REPOSITORY, relative_to_repository

DATASETS_VARIABLE = "AUTOSEG_TEST_DATA"
NNUNET_VENV_VARIABLE = "NNUNET_PEER_VENV"
# Named relative to the project root in every message, so that no message names a folder of one machine.
NNUNET_SETUP = "../shared/tools/nnunet-peer/setup.sh"


def folder(value: str) -> Path:
    """An argument naming a folder, made absolute: symbolic links to it and subprocesses in other folders stay valid."""
    return Path(value).expanduser().resolve()


def datasets_root() -> Path:
    """``$AUTOSEG_TEST_DATA``, else ``../shared/datasets`` beside the project root."""
    value = os.environ.get(DATASETS_VARIABLE)
    return folder(value) if value else (REPOSITORY.parent / "shared" / "datasets").resolve()


def nnunet_venv() -> Path:
    """``$NNUNET_PEER_VENV``, else the virtualenv the nnU-Net peer's setup script makes by default."""
    value = os.environ.get(NNUNET_VENV_VARIABLE)
    return folder(value) if value else Path(tempfile.gettempdir()) / "nnunet-peer" / "venv"


def scratch_folder(name: str) -> Path:
    """A benchmark's default scratch folder, kept between runs so that preprocessing is reused: ``name`` in the
    system's temporary folder (``$TMPDIR`` where set)."""
    return Path(tempfile.gettempdir()) / name


def add_datasets_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets-root", type=folder, default=datasets_root(), metavar="FOLDER",
        help=f"folder holding the shared datasets (default: ${DATASETS_VARIABLE}, else ../shared/datasets beside "
             "the project root)",
    )


def add_nnunet_venv_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nnunet-venv", type=folder, default=nnunet_venv(), metavar="FOLDER",
        help=f"nnU-Net v2's virtualenv (default: ${NNUNET_VENV_VARIABLE}, else the one {NNUNET_SETUP} creates "
             "without arguments, nnunet-peer/venv in the system's temporary folder)",
    )


def require_datasets(root: Path, names: list[str] | tuple[str, ...]) -> None:
    """Stop (exit status 2) with one sentence naming the missing dataset and how to point the benchmark to it."""
    for name in names:
        if not (root / name / "dataset.json").is_file():
            print(f"{root / name}: no dataset.json there; pass --datasets-root FOLDER or set {DATASETS_VARIABLE} "
                  f"to the folder holding {name}", file=sys.stderr)
            raise SystemExit(2)


def path_for_result(path: str | os.PathLike[str], *, scratch: Path | None = None) -> str:
    """``path`` as a result file records it: never a folder of one machine.

    Inside ``scratch``: the scratch folder as :func:`provenance.relative_to_repository` names it (its name alone
    when it lies elsewhere, as in the temporary folder) followed by the path inside it, so that the two tools'
    folders stay apart; any other path: :func:`provenance.relative_to_repository`.
    """
    resolved = Path(path).resolve()
    if scratch is not None:
        try:
            inside = resolved.relative_to(scratch.resolve())
        except ValueError:
            pass
        else:
            return (Path(relative_to_repository(scratch)) / inside).as_posix()
    return relative_to_repository(resolved)
