"""Model selection: compare configurations and every pairwise ensemble on the cross-validation, pick the best.

An ensemble averages the member configurations' probabilities (saved by each fold's validation prediction as
``CASE.npz`` in the input's grid). The winner is the candidate with the highest mean foreground Dice; post-processing
is then chosen on its cross-validation predictions. The decision is written as ``inference.json`` (the recipe
``autoseg predict`` follows when no configuration is named) and ``postprocessing.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.evaluation.folders import evaluate_against_ground_truth, label_files_by_case
from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.evaluation.targets import targets_from_dataset_json
from autoseg.inference.label_maps import label_map_from_probabilities
from autoseg.io.images import read_image_header, write_image
from autoseg.pipeline.crossval import collect_cross_validation
from autoseg.pipeline.quality_fit import fit_quality_model
from autoseg.records.dataset import RawDataset
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.inference_recipe import InferenceRecipe, RecipeCandidate, RecipeModel
from autoseg.records.work_folder import POSTPROCESSING_FILE, WorkFolder
from autoseg.utils.progress import progress_display


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration or ensemble, its cross-validation folder, and its scores."""

    name: str
    configurations: tuple[str, ...]
    folder: Path
    foreground_dice: float
    dice_per_class: dict[str, float | None]


def _finite_or_none(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _scores(summary: EvaluationSummary) -> tuple[float, dict[str, float | None]]:
    foreground = summary.foreground_dice
    return (float("nan") if foreground is None else float(foreground)), summary.dice_per_class


def ensemble_cross_validation(
    work_folder: WorkFolder, members: Sequence[str], dataset: RawDataset, *, cases: Sequence[str], workers: int = 2,
    progress: bool = True,
) -> Candidate:
    """Average the members' cross-validation probabilities for ``cases``, write label maps, evaluate."""
    name = "+".join(members)
    destination = work_folder.ensemble_crossval(name)
    destination.mkdir(parents=True, exist_ok=True)
    member_folders = [work_folder.crossval(member) for member in members]
    ground_truth = label_files_by_case(work_folder.ground_truth)
    for identifier in progress_display(cases, description=f"ensemble {name}", enabled=progress):
        # Always recomputed (it is cheap): members may have been retrained since the last selection.
        output = destination / f"{identifier}{dataset.file_ending}"
        probabilities = None
        for folder in member_folders:
            path = folder / f"{identifier}.npz"
            if not path.is_file():
                raise UserError(f"{path}: probabilities missing; re-run the fold's validation prediction.")
            with np.load(path, allow_pickle=False) as stored:
                member = stored["probabilities"].astype(np.float32)
            probabilities = member if probabilities is None else probabilities + member
        probabilities /= len(member_folders)
        label_map = label_map_from_probabilities(probabilities, dataset=dataset)
        write_image(label_map, read_image_header(ground_truth[identifier]), output)
    summary = evaluate_against_ground_truth(work_folder, destination, cases=cases, workers=workers, progress=progress)
    foreground, per_class = _scores(summary)
    return Candidate(name, tuple(members), destination, foreground, per_class)


def find_best(
    work_folder: WorkFolder, configurations: Sequence[str], folds: Sequence[int], *, workers: int = 2,
    progress: bool = True,
) -> InferenceRecipe:
    """Evaluate every configuration and pairwise ensemble; write ``inference.json`` and ``postprocessing.json``."""
    if not configurations:
        raise UserError(f"{work_folder}: no trained configuration to choose from.")
    dataset = work_folder.read_dataset()
    candidates: list[Candidate] = []
    cases: list[str] = []
    for configuration in configurations:
        summary = collect_cross_validation(work_folder, configuration, folds, workers=workers, progress=progress)
        cases = summary.cases
        foreground, per_class = _scores(summary)
        candidates.append(
            Candidate(configuration, (configuration,), work_folder.crossval(configuration), foreground, per_class)
        )
    for pair in itertools.combinations(configurations, 2):
        candidates.append(
            ensemble_cross_validation(work_folder, pair, dataset, cases=cases, workers=workers, progress=progress)
        )
    # NaN (no foreground anywhere) sorts last; ties keep the simpler (earlier) candidate.
    best = max(candidates, key=lambda c: -1.0 if np.isnan(c.foreground_dice) else c.foreground_dice)
    targets, ignore_label = targets_from_dataset_json(work_folder.dataset_json)
    postprocessing = determine_postprocessing(
        best.folder, work_folder.ground_truth, targets=targets, ignore_label=ignore_label, cases=cases,
        workers=workers, output_file=work_folder.postprocessing, progress=progress,
    )
    best_summary = EvaluationSummary.read_if_present(best.folder)
    quality = fit_quality_model(work_folder, best.configurations, best_summary) if best_summary is not None else None
    recipe = InferenceRecipe(
        models=tuple(RecipeModel(configuration, tuple(folds)) for configuration in best.configurations),
        selected=best.name,
        postprocessing=POSTPROCESSING_FILE,
        cross_validation_dice=_finite_or_none(best.foreground_dice),
        cross_validation_dice_after_postprocessing=postprocessing.evidence["foreground_dice_after"],
        candidates=tuple(_candidate_record(candidate, work_folder) for candidate in candidates),
        quality=quality,
    )
    recipe.write(work_folder.inference_recipe)
    return recipe


def _candidate_record(candidate: Candidate, work_folder: WorkFolder) -> RecipeCandidate:
    return RecipeCandidate(
        name=candidate.name,
        folder=candidate.folder.relative_to(work_folder.root).as_posix(),
        foreground_dice=_finite_or_none(candidate.foreground_dice),
        dice_per_class=candidate.dice_per_class,
    )


def format_candidates(recipe: InferenceRecipe) -> str:
    """One line per candidate with its mean foreground Dice; the selected one is starred."""
    lines = []
    for candidate in recipe.candidates:
        marker = "*" if candidate.name == recipe.selected else " "
        dice = candidate.foreground_dice
        lines.append(f" {marker} {candidate.name:<32} mean foreground Dice {'-' if dice is None else f'{dice:.4f}'}")
    return "\n".join(lines)
