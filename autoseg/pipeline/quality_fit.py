"""Fit the quality model on the cross-validation: the map from a case's raw quality score to its expected Dice.

Every fold's validation prediction wrote ``quality.csv`` (raw scores from the training labels' volume ranges, before
any calibration); ``collect_cross_validation`` gathered the rows in ``crossval/``. For the candidate model selection
chose (one configuration, or an ensemble whose raw score is its members' mean, as ``autoseg predict`` computes it),
the raw scores are paired with the Dice each case reached (mean over the foreground classes; 1 for a case without
foreground in prediction and reference) and an isotonic map is fitted. ``flag_below`` is 0.8 x the median
cross-validation Dice: the cases the evaluation would call failures. No test case's label is ever used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from autoseg.evaluation.failure_detection import FAILURE_FRACTION, fit_monotone_map
from autoseg.inference.quality_table import QUALITY_FILE, read_quality_table
from autoseg.records.evaluation_summary import CaseEvaluation, EvaluationSummary
from autoseg.records.quality_model import QualityModel
from autoseg.records.work_folder import WorkFolder


def case_dice(evaluation: CaseEvaluation) -> float:
    """A case's mean Dice over the foreground targets that are defined (``CaseEvaluation.mean_dice``, as the report
    shows it); 1 when none is: nothing to find, none found."""
    dice = evaluation.mean_dice
    return 1.0 if dice is None else dice


def raw_scores_of(work_folder: WorkFolder, configurations: Sequence[str]) -> dict[str, float]:
    """Each cross-validation case's raw score: the mean over ``configurations`` (cases a member lacks: left out)."""
    per_member = []
    for configuration in configurations:
        rows = read_quality_table(work_folder.crossval(configuration) / QUALITY_FILE)
        per_member.append({row["case"]: float(row["raw_score"]) for row in rows if row.get("raw_score")})
    common = set.intersection(*(set(member) for member in per_member)) if per_member else set()
    return {case: float(np.mean([member[case] for member in per_member])) for case in sorted(common)}


def fit_quality_model(
    work_folder: WorkFolder, configurations: Sequence[str], summary: EvaluationSummary
) -> QualityModel | None:
    """The calibrated quality model of the chosen candidate, or None when its cases have no quality rows."""
    fingerprint = work_folder.read_fingerprint()
    if fingerprint is None:
        return None
    raw = raw_scores_of(work_folder, configurations)
    dice = {evaluation.case: case_dice(evaluation) for evaluation in summary.per_case}
    cases = [case for case in raw if case in dice]
    if not cases:
        return None
    scores, reached = [raw[case] for case in cases], [dice[case] for case in cases]
    knots, expected = fit_monotone_map(scores, reached)
    median = float(np.median(reached))
    return dataclasses.replace(
        QualityModel.from_fingerprint(fingerprint), raw_scores=knots, expected=expected,
        flag_below=round(FAILURE_FRACTION * median, 4), fitted_on=len(cases),
        cross_validation_median_dice=round(median, 4),
    )
