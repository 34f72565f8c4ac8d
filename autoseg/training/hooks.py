"""What happens after a fold has trained: by default, predict its validation cases with the full predictor and score
them against the ground truth.

Hooks are named functions ``hook(fold_folder, *, ...) -> dict | None`` in ``AFTER_TRAINING_HOOKS``; their results
are stored in ``training_summary.json``. The inference and evaluation stages are imported only when the hook runs,
so training itself does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoseg.data.dataset import RawDataset
from autoseg.utils.files import read_json

AfterTrainingHook = Callable[..., "dict[str, Any] | None"]
VALIDATION_FOLDER = "validation"


def predict_validation_cases(
    fold_folder: Path,
    *,
    dataset_work_folder: Path,
    configuration_name: str,
    fold: int | str,
    validation_case_ids: Sequence[str],
    device: str,
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, Any] | None:
    """Segment the fold's validation cases from their raw images with the sliding-window predictor (final checkpoint,
    mirroring on) into ``fold_folder/validation/`` (label maps and ``CASE.npz`` probabilities, which model selection
    ensembles), then write ``summary.json`` and ``metrics.csv`` there.

    Returns the foreground-mean and per-class Dice. Fold ``all`` has no held-out cases: nothing to do.
    """
    if str(fold) == "all":
        return {"skipped": "fold 'all' has no held-out validation cases"}
    from autoseg.evaluation.folders import evaluate_against_ground_truth
    from autoseg.inference.predictor import Predictor

    dataset = RawDataset.from_dict(read_json(dataset_work_folder / "dataset.json"))
    predictor = Predictor.from_model_folder(
        dataset_work_folder, configuration=configuration_name, folds=[fold], checkpoint="final", device=device,
        precision=precision,
    )
    output_folder = fold_folder / VALIDATION_FOLDER
    output_folder.mkdir(parents=True, exist_ok=True)
    cases = [dataset.case(identifier) for identifier in validation_case_ids]
    predictor.predict_files(
        [case.images for case in cases],
        [output_folder / f"{case.identifier}{dataset.file_ending}" for case in cases],
        save_probabilities=True,  # CASE.npz: model selection ensembles configurations on these
        progress=progress,
    )
    summary = evaluate_against_ground_truth(dataset_work_folder, output_folder, cases=validation_case_ids)
    return {
        "folder": str(output_folder),
        "mean_dice": summary["foreground_mean"]["dice"],
        "dice": {entry["name"]: entry["dice"] for entry in summary["mean"].values()},
    }


AFTER_TRAINING_HOOKS: dict[str, AfterTrainingHook] = {"predict_validation": predict_validation_cases}


def after_training(fold_folder: Path, *, hooks: Sequence[str] = ("predict_validation",), **context: Any) -> dict:
    """Run the named hooks in order; return ``{hook name: result}``.

    The final checkpoint is already on disk when hooks run, so a failing hook must not turn a finished training into
    a failed one: its error is recorded as ``{"failed": message}`` and the next hook runs.
    """
    results: dict[str, Any] = {}
    for name in hooks:
        try:
            results[name] = AFTER_TRAINING_HOOKS[name](fold_folder, **context)
        except Exception as error:
            results[name] = {"failed": f"{type(error).__name__}: {error}"}
    return results
