"""The ``fingerprint.json`` record: what the raw data is, as the planner saw it (a JSON mapping, versioned).

Keys: ``fingerprint_version``, ``inputs_signature``, ``is_2d``, ``cases`` (per case: spacing, shapes, crop),
``case_signatures`` (per case: a hash of its files' paths, sizes and times), intensity statistics per channel.
"""

from __future__ import annotations

import os
from pathlib import Path

from autoseg.errors import UserError
from autoseg.utils.files import read_json

# Bump when the content or meaning of fingerprint.json changes, so old files are recomputed rather than trusted.
# 2: per-case input signatures (``case_signatures``), so later stages can name the cases that changed.
FINGERPRINT_VERSION = 2


def load_fingerprint(path: str | os.PathLike[str]) -> dict:
    """Read a ``fingerprint.json``; a missing or unreadable file is a user error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no fingerprint found; run `autoseg plan DATASET` first.")
    try:
        return read_json(path)
    except ValueError:
        raise UserError(f"{path}: is not valid JSON; delete it and run `autoseg plan DATASET` again.") from None
