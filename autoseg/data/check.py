"""Verify a raw dataset before any stage runs: open every image and label and report every problem at once.

The structural scan (``scan_raw_dataset``) finds missing, extra and misnamed files without opening them. This
module then opens every file, in a process pool, and checks what only the files can tell (an integer NIfTI image,
such as a CT scan, only by its header and its length: its voxels can be neither NaN nor of an odd type):

- every file is readable and complete (truncated NIfTI files are caught), and is 2D or 3D;
- all channels of a case and its label share one shape and one spacing (errors), and one origin and one
  direction (warnings: many scanners write slightly different headers, and resampling ignores them);
- image intensities are finite (no NaN/Inf);
- label values are integers (float label files are fine when they hold whole numbers) declared in
  ``dataset.json``.

Nothing is ever written into the dataset folder.

Example (``dataset_folder`` is a raw dataset of three real Hippocampus cases):
    >>> check_dataset(dataset_folder, workers=1, progress=False)
    []
    >>> import json, shutil
    >>> broken = Path(shutil.copytree(dataset_folder, "Dataset004_Broken", symlinks=True))
    >>> meta = json.loads((broken / "dataset.json").read_text()); del meta["labels"]["posterior"]
    >>> _ = (broken / "dataset.json").write_text(json.dumps(meta))
    >>> for problem in check_dataset(broken, workers=1, progress=False):  # every case's problem at once
    ...     print(problem.severity, problem.case, problem.message)
    error hippocampus_001 label values 2 are not declared in dataset.json (declared: 0, 1)
    error hippocampus_004 label values 2 are not declared in dataset.json (declared: 0, 1)
    error hippocampus_006 label values 2 are not declared in dataset.json (declared: 0, 1)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from autoseg.data.raw_folder import scan_raw_dataset
from autoseg.errors import DatasetError, UserError
from autoseg.io.images import Geometry, count_non_finite_nifti_voxels, read_image, read_integer_nifti_header
from autoseg.records.dataset import Case, Problem, RawDataset
from autoseg.utils.parallel import parallel_map

# Tolerances for comparing headers of files that belong to one case. Spacing is stored as float32 in NIfTI, so
# equal spacings written by different tools may differ in the last bits; real mismatches are far larger.
SPACING_RELATIVE_TOLERANCE = 1e-4
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4
MAX_LISTED_VALUES = 10

def _listed(values: Iterable[object]) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:MAX_LISTED_VALUES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED_VALUES else "")


def _compare_headers(
    reference_path: str, reference: Geometry, other_path: str, other: Geometry, case: str
) -> list[Problem]:
    """Problems between the headers of two files of one case: shape/spacing errors, origin/direction warnings."""
    problems = []
    name = Path(reference_path).name
    if reference.shape != other.shape:
        problems.append(
            Problem("error", f"shape {list(other.shape)} differs from {list(reference.shape)} of {name}", case,
                    other_path)
        )
    if not np.allclose(other.spacing, reference.spacing, rtol=SPACING_RELATIVE_TOLERANCE, atol=0):
        problems.append(
            Problem("error", f"spacing {list(other.spacing)} differs from {list(reference.spacing)} of {name}",
                    case, other_path)
        )
    if not np.allclose(other.origin, reference.origin, rtol=0, atol=ORIGIN_TOLERANCE_MM):
        problems.append(
            Problem("warning", f"origin {list(other.origin)} differs from {list(reference.origin)} of {name}",
                    case, other_path)
        )
    if not np.allclose(other.direction, reference.direction, rtol=0, atol=DIRECTION_TOLERANCE):
        problems.append(Problem("warning", f"direction differs from that of {name}", case, other_path))
    return problems


def _label_value_problems(array: np.ndarray, declared: tuple[int, ...], case: str, path: str) -> list[Problem]:
    if array.dtype.kind == "f":
        values = np.unique(array)
        fractional = values[values != np.round(values)]
        if fractional.size:
            return [Problem("error", f"label values must be integers, found {_listed(fractional.tolist())}", case,
                            path)]
        values = values.astype(np.int64)
    elif array.dtype.kind in "iub":
        values = np.unique(array).astype(np.int64)
    else:
        return [Problem("error", f"label file has unsupported voxel type {array.dtype}", case, path)]
    undeclared = sorted(set(values.tolist()) - set(declared))
    if undeclared:
        return [
            Problem("error", f"label values {_listed(undeclared)} are not declared in dataset.json "
                             f"(declared: {_listed(declared)})", case, path)
        ]
    return []


def _non_finite_count(array: np.ndarray, path: str) -> int:
    """NaN/Inf voxels of a float image, looking at the stored bytes of NIfTI files (ITK reads NaN there as 0)."""
    if array.dtype.kind != "f":
        return 0
    return max(int(array.size - np.count_nonzero(np.isfinite(array))), count_non_finite_nifti_voxels(path))


def check_case(task: tuple[Case, tuple[int, ...]]) -> tuple[list[Problem], bool | None]:
    """Open every file of one case and return its problems and whether it is 2D (None if unreadable).

    ``task`` is ``(case, declared label values)``; a single argument keeps the function usable with a pool.
    """
    case, declared = task
    problems: list[Problem] = []
    geometries = {}
    for path in case.images:
        try:
            header = read_integer_nifti_header(path)  # an integer image needs no voxel checks: a CT's 0.8 s saved
            if header is not None:
                geometries[path] = header
                continue
            image = read_image(path)
        except UserError as error:
            problems.append(Problem("error", _strip_path(str(error), path), case.identifier, path))
            continue
        geometries[path] = image.geometry
        bad = _non_finite_count(image.array, path)
        if bad:
            problems.append(Problem("error", f"image contains {bad} NaN or Inf voxel(s)", case.identifier, path))
        elif image.array.dtype.kind not in "fiub":
            problems.append(
                Problem("error", f"image has unsupported voxel type {image.array.dtype}", case.identifier, path)
            )
    if case.label is not None:
        try:
            label = read_image(case.label)
        except UserError as error:
            problems.append(Problem("error", _strip_path(str(error), case.label), case.identifier, case.label))
        else:
            geometries[case.label] = label.geometry
            if _non_finite_count(label.array, case.label):
                problems.append(Problem("error", "label file contains NaN or Inf values", case.identifier, case.label))
            else:
                problems.extend(_label_value_problems(label.array, declared, case.identifier, case.label))
    if geometries:
        reference_path = case.images[0] if case.images[0] in geometries else next(iter(geometries))
        reference = geometries[reference_path]
        for path, geometry in geometries.items():
            if path != reference_path:
                problems.extend(_compare_headers(reference_path, reference, path, geometry, case.identifier))
    is_2d = geometries[case.images[0]].is_2d if case.images and case.images[0] in geometries else None
    return problems, is_2d


def _strip_path(message: str, path: str) -> str:
    """Reader errors start with the path, which ``Problem`` already shows."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def check_dataset(root: str | Path, *, workers: int = 2, progress: bool = True) -> list[Problem]:
    """Every problem of the raw dataset at ``root``: structure first, then the content of every file.

    Returns errors and warnings, structural ones first, then per case in case order. An empty list, or one
    with warnings only, means later stages can trust the dataset.
    """
    dataset, problems = scan_raw_dataset(root)
    if dataset is None:
        return problems
    cases = list(dataset.training_cases) + list(dataset.test_cases)
    declared = dataset.declared_label_values
    tasks = [(case, declared) for case in cases]
    dimensionality: dict[str, bool] = {}
    results = parallel_map(check_case, tasks, workers=workers, progress=progress, description="checking cases")
    for case, (case_problems, is_2d) in zip(cases, results, strict=True):
        problems.extend(case_problems)
        if is_2d is not None and case.label is not None:
            dimensionality[case.identifier] = is_2d
    two_d = sorted(identifier for identifier, flag in dimensionality.items() if flag)
    if two_d and len(two_d) != len(dimensionality):
        problems.append(
            Problem("error", f"mixes 2D (1xHxW) and 3D training cases; 2D cases: {_listed(two_d)}",
                    path=str(Path(dataset.root) / "imagesTr"))
        )
    return problems


def format_problems(problems: Sequence[Problem], *, limit: int | None = 20) -> str:
    """One line per problem, errors first, shortened to ``limit`` lines (None: all)."""
    ordered = sorted(problems, key=lambda p: p.severity != "error")
    shown = ordered if limit is None else ordered[:limit]
    lines = [f"  {problem}" for problem in shown]
    if len(ordered) > len(shown):
        lines.append(f"  ... and {len(ordered) - len(shown)} more (run `autoseg check DATASET` to see all)")
    return "\n".join(lines)


def require_valid_dataset(root: str | Path, *, workers: int = 2, progress: bool = True) -> RawDataset:
    """The dataset at ``root`` after a full check; raise ``DatasetError`` listing every error.

    Later stages call this before they start, so a bad label or a truncated file is reported in one message
    up front instead of as a crash hours into training. Warnings are printed to stderr and do not stop.
    """
    problems = check_dataset(root, workers=workers, progress=progress)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DatasetError(
            f"{root}: the raw dataset has {len(errors)} problem(s); fix them and rerun:\n"
            + format_problems(errors)
        )
    warnings = [p for p in problems if p.severity == "warning"]
    if warnings:
        print(format_problems(warnings), file=sys.stderr)
    dataset, _ = scan_raw_dataset(root)
    assert dataset is not None  # no errors above means the scan succeeded
    return dataset
