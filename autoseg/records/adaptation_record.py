"""A fold's test-time adapter record, ``models/CONFIG/fold_K/adaptation/adaptation.json``, read in one place.

Written by ``autoseg train-adapter`` (``autoseg.inference.adaptation.adapter``): the checkpoint it was made for
(``checkpoint_sha256``), the source statistics, and per method its file and settings (docs/adaptation.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.utils.files import read_json


def read_adaptation_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record as written; ``UserError`` naming the file when it is not a JSON mapping."""
    path = Path(path)
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: is not valid JSON; run `autoseg train-adapter` again.") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: is not an adaptation record; run `autoseg train-adapter` again.")
    return record
