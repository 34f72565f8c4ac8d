"""Per-case signatures of a raw dataset's files, and the cases added, removed or changed since they were recorded.

``fingerprint.json`` records ``case_signatures`` when the dataset is planned, so every later stage can name the cases
that changed since (``require_unchanged_since_planning``) instead of silently using stale plans, folds or data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from autoseg.errors import UserError
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.fingerprint import load_fingerprint
from autoseg.records.work_folder import WorkFolder

CASE_SIGNATURE_LENGTH = 16


def relative_to_root(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(Path(path).resolve())


def case_file_lines(case: Case, root: Path) -> str:
    """One ``identifier, relative path, size, mtime_ns`` line per image and label file of ``case``.

    Reading headers or voxels would cost as much as fingerprinting; size plus modification time catches every edit a
    user makes in practice (a rewritten file always gets a new mtime).
    """
    files = [*case.images, *([case.label] if case.label else [])]
    lines = []
    for path in files:
        status = os.stat(path)
        lines.append(f"{case.identifier}\t{relative_to_root(path, root)}\t{status.st_size}\t{status.st_mtime_ns}\n")
    return "".join(lines)


def case_signatures(dataset: RawDataset) -> dict[str, str]:
    """``{case identifier: short SHA-256 of (relative path, size, mtime_ns) of its image and label files}``."""
    root = Path(dataset.root).resolve()
    return {
        case.identifier: hashlib.sha256(case_file_lines(case, root).encode("utf-8")).hexdigest()[:CASE_SIGNATURE_LENGTH]
        for case in dataset.training_cases
    }


@dataclasses.dataclass(frozen=True)
class DatasetChanges:
    """Cases added, removed or changed (files rewritten) since a recorded set of case signatures."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, *, listed: int = 3) -> str:
        """E.g. ``2 case(s) added (a, b), 1 changed (c)``."""
        parts = []
        for word, cases in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if cases:
                names = ", ".join(cases[:listed]) + (", ..." if len(cases) > listed else "")
                parts.append(f"{len(cases)} {word} ({names})")
        return "case(s) " + ", ".join(parts)


def compare_case_signatures(recorded: dict[str, str | None], current: dict[str, str]) -> DatasetChanges:
    """What changed from ``recorded`` to ``current``; a recorded signature of None only checks presence."""
    return DatasetChanges(
        added=tuple(sorted(set(current) - set(recorded))),
        removed=tuple(sorted(set(recorded) - set(current))),
        changed=tuple(sorted(
            identifier for identifier, signature in recorded.items()
            if signature is not None and identifier in current and current[identifier] != signature
        )),
    )


def changes_since_planning(work_folder: WorkFolder, dataset: RawDataset) -> DatasetChanges:
    """How the dataset's cases differ from those its ``fingerprint.json`` (and so its plans) was made from.

    A fingerprint of an older autoseg without per-case signatures can only tell added and removed cases.
    Nothing is reported when there is no fingerprint yet.
    """
    if not work_folder.fingerprint.is_file():
        return DatasetChanges()
    fingerprint = load_fingerprint(work_folder.fingerprint)
    recorded = fingerprint.case_signatures or dict.fromkeys(fingerprint.cases)
    return compare_case_signatures(recorded, case_signatures(dataset))


def require_unchanged_since_planning(work_folder: WorkFolder, dataset: RawDataset, *, how_to_proceed: str) -> None:
    """Raise ``UserError`` naming the cases that changed since planning, and ``how_to_proceed``."""
    changes = changes_since_planning(work_folder, dataset)
    if changes:
        raise UserError(
            f"{dataset.root}: the dataset changed since it was planned in {work_folder} ({changes.describe()}); "
            f"{how_to_proceed}"
        )
