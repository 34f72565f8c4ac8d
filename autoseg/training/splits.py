"""Cross-validation folds: shuffled K-fold with a fixed seed, optional grouping, saved as ``splits.json``.

``splits.json`` is a list of ``{"train": [...], "val": [...]}``, one entry per fold. A user-provided file in the
same format is honoured as is (after checking that it names only known cases). Reading and writing the file is
``autoseg.records.splits``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.records.splits import read_splits, write_splits

DEFAULT_NUMBER_OF_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345
LEADING_NUMBER_PATTERN = re.compile(r"^(?P<number>\d+)_")

CaseGrouper = Callable[[str], str]


def group_by_case(identifier: str) -> str:
    """Every case is its own group (plain K-fold)."""
    return identifier


def group_by_leading_number(identifier: str) -> str:
    """Cases whose identifiers start with the same number and an underscore share a group.

    HC18 names repeated scans of one fetus ``NNN_HC``, ``NNN_2HC``, ...; putting them in one fold keeps the same
    fetus out of training and validation at once. Identifiers without a leading number form their own group.
    """
    match = LEADING_NUMBER_PATTERN.match(identifier)
    return match.group("number") if match else identifier


CASE_GROUPERS: dict[str, CaseGrouper] = {
    "none": group_by_case,
    "leading-number": group_by_leading_number,
}


def make_splits(
    case_ids: Sequence[str],
    *,
    number_of_folds: int = DEFAULT_NUMBER_OF_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
    grouper: CaseGrouper = group_by_case,
) -> list[dict[str, list[str]]]:
    """Shuffled K-fold over groups of cases.

    Groups (from ``grouper``) are sorted, shuffled with ``numpy.random.RandomState(seed)`` and dealt into
    ``number_of_folds`` contiguous chunks whose sizes differ by at most one group; the result depends only on the
    set of identifiers, the seed and the grouping, never on the order the cases were listed in.
    """
    identifiers = sorted(set(case_ids))
    groups: dict[str, list[str]] = {}
    for identifier in identifiers:
        groups.setdefault(grouper(identifier), []).append(identifier)
    group_names = sorted(groups)
    if len(group_names) < number_of_folds:
        raise UserError(
            f"cannot make {number_of_folds} folds from {len(group_names)} case group(s); add cases or train fold 'all'."
        )
    order = np.random.RandomState(seed).permutation(len(group_names))
    chunks = np.array_split(order, number_of_folds)
    splits = []
    for chunk in chunks:
        validation_groups = {group_names[index] for index in chunk}
        validation = sorted(i for g in validation_groups for i in groups[g])
        train = sorted(i for g in group_names if g not in validation_groups for i in groups[g])
        splits.append({"train": train, "val": validation})
    return splits


def require_complete_and_grouped(
    splits: list[dict], path: Path, case_ids: Sequence[str], *, grouper: CaseGrouper = group_by_case
) -> None:
    """Refuse existing folds that leave out cases of the dataset (added after they were made) or split a group.

    Extending the folds would change the training cases of folds already trained, so the user must choose.
    """
    how = f"delete {path} to make new folds (then retrain every fold) or pass your own folds with --splits."
    # A case in no fold at all came after the folds were made (folds of the user's may hold cases out of
    # validation on purpose, but they still train on them).
    mentioned = {identifier for fold in splits for identifier in fold["train"] + fold["val"]}
    left_out = sorted(set(case_ids) - mentioned)
    if left_out:
        listed = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        raise UserError(f"{path}: its folds leave out {len(left_out)} case(s) of the dataset ({listed}); {how}")
    if grouper is group_by_case:
        return
    for index, fold in enumerate(splits):
        straddling = sorted({grouper(i) for i in fold["train"]} & {grouper(i) for i in fold["val"]})
        if straddling:
            raise UserError(
                f"{path}: fold {index} has group {straddling[0]} in both training and validation, so it was not "
                f"made with this --group-cases; {how}"
            )


def load_or_create_splits(
    splits_path: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    user_splits_file: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    grouper: CaseGrouper = group_by_case,
    write: bool = True,
) -> list[dict]:
    """The folds to train with.

    A user file wins and is copied to ``splits_path`` (so later stages see the same folds); else an existing
    ``splits_path`` is reused (folds must not change between the folds of one cross-validation); else new folds are
    made and written. ``write=False`` (non-main DDP ranks) only computes.
    """
    if user_splits_file is not None:
        splits = read_splits(user_splits_file, known_case_ids=case_ids)
        if write:
            write_splits(splits_path, splits)
        return splits
    if Path(splits_path).exists():
        splits = read_splits(splits_path, known_case_ids=case_ids)
        require_complete_and_grouped(splits, Path(splits_path), case_ids, grouper=grouper)
        return splits
    splits = make_splits(case_ids, seed=seed, grouper=grouper)
    if write:
        write_splits(splits_path, splits)
    return splits


def cases_for_fold(splits: list[dict], fold: int | str, case_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Training and validation case ids of ``fold``; fold ``"all"`` trains on every case and validates on them too."""
    if fold == "all":
        everything = sorted(case_ids)
        return everything, everything
    fold = int(fold)
    if not 0 <= fold < len(splits):
        raise UserError(f"fold {fold} does not exist: the splits define folds 0 to {len(splits) - 1}.")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


__all__ = [
    "CASE_GROUPERS",
    "DEFAULT_NUMBER_OF_FOLDS",
    "DEFAULT_SPLIT_SEED",
    "cases_for_fold",
    "group_by_case",
    "group_by_leading_number",
    "load_or_create_splits",
    "make_splits",
    "require_complete_and_grouped",
]
