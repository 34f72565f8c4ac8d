"""``splits.json``: the cross-validation folds, a list of ``{"train": [...], "val": [...]}``, one entry per fold.

Making the folds is training's business (``autoseg.training.splits``); reading and writing the file is here, so
every stage reads the same checked list.

Example:
    >>> write_splits("splits.json", [{"train": ["case_1", "case_2"], "val": ["case_3"]}])
    >>> read_splits("splits.json", known_case_ids=["case_1", "case_2", "case_3"])[0]["val"]
    ['case_3']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.utils.files import read_json, write_json


def read_splits(path: str | os.PathLike[str], *, known_case_ids: Sequence[str] | None = None) -> list[dict]:
    """Read and check a splits file: a non-empty list of ``{"train": [...], "val": [...]}`` naming known cases."""
    path = Path(path)
    try:
        splits = read_json(path)
    except FileNotFoundError as error:
        raise UserError(f"splits file {path} does not exist.") from error
    except ValueError:
        raise UserError(
            f"splits file {path} is not valid JSON (cut short or damaged?); fix it, or delete it and autoseg makes "
            "the automatic splits again."
        ) from None
    if not isinstance(splits, list) or not splits or not all(
        isinstance(fold, dict) and isinstance(fold.get("train"), list) and isinstance(fold.get("val"), list)
        for fold in splits
    ):
        raise UserError(f'splits file {path} must be a list of {{"train": [...], "val": [...]}} entries, one per fold.')
    if known_case_ids is not None:
        known = set(known_case_ids)
        unknown = sorted({i for fold in splits for i in fold["train"] + fold["val"]} - known)
        if unknown:
            raise UserError(f"splits file {path} names case(s) not in the dataset: {', '.join(unknown[:5])}.")
    return splits


def write_splits(path: str | os.PathLike[str], splits: list[dict]) -> None:
    """Write the folds (indented JSON, keys in their order)."""
    write_json(path, splits)
