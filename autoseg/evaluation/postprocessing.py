"""Choose keep-largest-component post-processing on cross-validation predictions (a ``PostprocessingDecision``).

How it is chosen (mirroring the reference pipeline's rule):

1. Keep the largest component of the whole foreground. Adopted only if it raises the mean foreground Dice (mean over
   classes of the mean over cases) and lowers no class's mean Dice.
2. Then, on top of step 1's outcome, keep the largest component of each class on its own, with the same rule per
   class. Removing voxels of one class turns them into background, which leaves every other class's Dice
   unchanged, so the classes are tested one at a time and the adopted ones combined.

Example (``prediction_folder`` holds the reference label maps of three cases, each with a false 2x2x2 block of
class 1 in a corner):
    >>> decision = determine_postprocessing(prediction_folder, reference_folder, output_file="postprocessing.json")
    >>> decision.keep_largest_foreground, decision.keep_largest_per_class
    (True, ())
    >>> PostprocessingDecision.read("postprocessing.json") == decision
    True
    >>> from autoseg.io.images import read_image
    >>> label_map = read_image(prediction_folder / "hippocampus_001.nii.gz").array
    >>> cleaned = decision.apply(label_map)
    >>> int((label_map != cleaned).sum())  # the false block is gone
    8
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import UserError
from autoseg.evaluation.folders import (
    check_same_geometry,
    label_files_by_case,
    mean_of_defined,
    run_over_cases,
)
from autoseg.evaluation.metrics import overlap_metrics
from autoseg.evaluation.targets import EvaluationTarget, describe_targets, targets_from_label_values
from autoseg.io.images import read_image, write_image
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.utils.components import keep_largest_of_values

# Dice differences below this are floating-point noise, not an improvement or a loss.
_DICE_TOLERANCE = 1e-9


def _dice_per_target(
    prediction: np.ndarray, reference: np.ndarray, targets: Sequence[EvaluationTarget], evaluated: np.ndarray | None
) -> dict[str, float | None]:
    dice = {}
    for target in targets:
        predicted, expected = target.mask(prediction), target.mask(reference)
        if evaluated is not None:
            predicted, expected = predicted & evaluated, expected & evaluated
        dice[target.key] = overlap_metrics(predicted, expected)["dice"]
    return dice


def _candidate_dice_for_case(
    case: str,
    prediction_path: Path,
    reference_path: Path,
    targets: Sequence[EvaluationTarget],
    ignore_label: int | None,
) -> dict[str, Any]:
    """Per-target Dice of one case without post-processing, with step 1, and with each class step on top of both."""
    prediction = read_image(prediction_path)
    reference = read_image(reference_path)
    check_same_geometry(prediction.geometry, reference.geometry, case, prediction_path)
    evaluated = None if ignore_label is None else reference.array != ignore_label
    base = prediction.array
    foreground_values = [int(v) for v in np.unique(base) if v != 0]
    with_foreground_step = keep_largest_of_values(base, foreground_values) if foreground_values else base
    result: dict[str, Any] = {"case": case, "variants": {}}
    for state_name, state in (("none", base), ("foreground", with_foreground_step)):
        result["variants"][state_name] = _dice_per_target(state, reference.array, targets, evaluated)
        for target in targets:
            cleaned = keep_largest_of_values(state, target.values)
            result["variants"][f"{state_name}+{target.key}"] = _dice_per_target(
                cleaned, reference.array, targets, evaluated
            )
    return result


def _means(per_case: Sequence[dict], variant: str, targets: Sequence[EvaluationTarget]) -> dict[str, float | None]:
    return {t.key: mean_of_defined(case["variants"][variant][t.key] for case in per_case) for t in targets}


def _foreground_mean(means: dict[str, float | None]) -> float | None:
    return mean_of_defined(means.values())


def _is_better(candidate: dict[str, float | None], current: dict[str, float | None]) -> bool:
    """Higher mean foreground Dice and no class lower (classes undefined in both are ignored)."""
    candidate_mean, current_mean = _foreground_mean(candidate), _foreground_mean(current)
    if candidate_mean is None or current_mean is None or candidate_mean <= current_mean + _DICE_TOLERANCE:
        return False
    for key, value in current.items():
        if value is not None and (candidate[key] is None or candidate[key] < value - _DICE_TOLERANCE):
            return False
    return True


def _paired_cases(
    prediction_folder: str | os.PathLike[str],
    reference_folder: str | os.PathLike[str],
    cases: Sequence[str] | None,
    *,
    prediction_files: dict[str, Path],
    reference_files: dict[str, Path],
) -> list[str]:
    """``cases`` (default: every predicted case), refused unless each has a prediction and a reference."""
    chosen = sorted(prediction_files) if cases is None else list(dict.fromkeys(cases))
    if not chosen:
        raise UserError(f"{prediction_folder}: no predicted label files to choose post-processing on.")
    missing = [case for case in chosen if case not in reference_files or case not in prediction_files]
    if missing:
        raise UserError(
            f"{reference_folder}: no prediction/reference pair for {len(missing)} case(s): {', '.join(missing[:10])}."
        )
    return chosen


def _targets_in_references(reference_paths: list[Path], ignore_label: int | None) -> list[EvaluationTarget]:
    """One target per non-zero label value present in the references (the ignore label aside)."""
    found: set[int] = set()
    for path in reference_paths:
        found.update(int(v) for v in np.unique(read_image(path).array))
    return targets_from_label_values(found - ({ignore_label} if ignore_label is not None else set()))


def _decide(per_case: Sequence[dict], targets: tuple[EvaluationTarget, ...]) -> PostprocessingDecision:
    """The decision for these per-case Dice values, with the mean Dice that justified it as evidence.

    Step 1 (the foreground's largest component), then each class's step on top of its outcome, each adopted only
    when ``_is_better``.
    """
    before = _means(per_case, "none", targets)
    foreground_step = _means(per_case, "foreground", targets)
    adopt_foreground = _is_better(foreground_step, before)
    state_name = "foreground" if adopt_foreground else "none"
    current = foreground_step if adopt_foreground else before
    adopted_classes: list[EvaluationTarget] = []
    after = dict(current)
    for target in targets:
        candidate = _means(per_case, f"{state_name}+{target.key}", targets)
        if _is_better(candidate, current):
            adopted_classes.append(target)
            after[target.key] = candidate[target.key]
    return PostprocessingDecision(
        keep_largest_foreground=adopt_foreground,
        keep_largest_per_class=tuple(
            target.values[0] if len(target.values) == 1 else tuple(target.values) for target in adopted_classes
        ),
        evidence={
            "cases": len(per_case),
            "targets": describe_targets(targets),
            "dice_before": before,
            "dice_with_foreground_step": foreground_step,
            "dice_after": after,
            "foreground_dice_before": _foreground_mean(before),
            "foreground_dice_after": _foreground_mean(after),
        },
    )


def determine_postprocessing(
    prediction_folder: str | os.PathLike[str],
    reference_folder: str | os.PathLike[str],
    *,
    targets: Sequence[EvaluationTarget] | None = None,
    ignore_label: int | None = None,
    cases: Sequence[str] | None = None,
    workers: int = 1,
    output_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PostprocessingDecision:
    """Decide which keep-largest-component steps to adopt on cross-validation predictions (see module docstring).

    Args:
        targets: classes/regions; default: every non-zero value in the predictions' references.
        cases: identifiers to use; default: every case that has a prediction (cross-validation folders hold only
            validation cases, the reference folder holds all).
        output_file: where the decision is written atomically as JSON (e.g. ``postprocessing.json``).

    Returns:
        The decision with an ``evidence`` entry: per-class mean Dice before, after step 1 and after all adopted steps.
    """
    prediction_files = label_files_by_case(prediction_folder)
    reference_files = label_files_by_case(reference_folder)
    chosen = _paired_cases(
        prediction_folder, reference_folder, cases, prediction_files=prediction_files, reference_files=reference_files
    )
    if targets is None:
        targets = _targets_in_references([reference_files[case] for case in chosen], ignore_label)
    targets = tuple(targets)
    per_case = run_over_cases(
        _candidate_dice_for_case,
        [(case, prediction_files[case], reference_files[case], targets, ignore_label) for case in chosen],
        workers=workers,
        description="post-processing",
        progress=progress,
    )
    decision = _decide(per_case, targets)
    if output_file is not None:
        decision.write(output_file)
    return decision


def _postprocess_file(source: Path, destination: Path, decision: PostprocessingDecision) -> None:
    image = read_image(source)
    write_image(decision.apply(image.array), image.geometry, destination)


def apply_postprocessing_to_folder(
    input_folder: str | os.PathLike[str],
    output_folder: str | os.PathLike[str],
    decision: PostprocessingDecision,
    *,
    workers: int = 1,
) -> list[Path]:
    """Post-process every label map in ``input_folder`` into ``output_folder`` (same names, same geometry)."""
    files = label_files_by_case(input_folder)
    output_folder = Path(output_folder)
    destinations = [output_folder / path.name for path in files.values()]
    run_over_cases(
        _postprocess_file,
        [(path, destination, decision) for path, destination in zip(files.values(), destinations, strict=True)],
        workers=workers,
        description="post-process",
    )
    return destinations
