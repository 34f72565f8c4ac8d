"""The report's "Quality estimates" section: how well the per-case quality score ranked the cross-validation cases.

Shown when ``inference.json`` holds a quality model and the selected candidate's cross-validation folders hold
``quality.csv``. A case's raw score is the one the calibration was fitted on (``quality_fit.raw_scores_of``: for an
ensemble, the mean of its members' raw scores), its true Dice the one model selection measured
(``quality_fit.case_dice`` of the candidate's ``summary.json``). The section holds a risk-coverage plot (the quality
score against the constant score and the oracle that knows the true Dice, each with its AURC), the cases with the
lowest expected Dice, and the threshold ``autoseg predict`` flags cases below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from autoseg.evaluation.failure_detection import FAILURE_FRACTION, aurc, risk_coverage
from autoseg.inference.quality_table import QUALITY_FILE, read_quality_table
from autoseg.pipeline.quality_fit import case_dice, raw_scores_of
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.quality_model import QualityModel
from autoseg.records.work_folder import WorkFolder
from autoseg.report import ReportSection, format_number
from autoseg.report.figures import SERIES_COLOURS, figure_png, new_figure

CASES_TO_CHECK = 10
TITLE = "Quality estimates"
FIGURE_CAPTION = "risk-coverage on the cross-validation cases (lower is better)"


@dataclasses.dataclass(frozen=True)
class CrossValidationCase:
    """One cross-validation case of the selected candidate: its quality estimate and the Dice it truly reached."""

    case: str
    raw_score: float
    expected_dice: float
    dice: float
    reasons: tuple[str, ...]
    flagged: bool


def _reasons_of(work: WorkFolder, configurations: Sequence[str]) -> dict[str, list[str]]:
    """Each case's reasons from ``quality.csv``; for an ensemble, each reason names the member that gave it."""
    reasons: dict[str, list[str]] = {}
    for configuration in configurations:
        for row in read_quality_table(work.crossval(configuration) / QUALITY_FILE):
            found = [reason for reason in (row.get("reasons") or "").split("; ") if reason]
            if len(configurations) > 1:
                found = [f"{reason} ({configuration})" for reason in found]
            reasons.setdefault(row["case"], []).extend(found)
    return reasons


def cross_validation_quality(work: WorkFolder, recipe: InferenceRecipe) -> list[CrossValidationCase]:
    """The selected candidate's cross-validation cases that have both a raw score and a Dice, lowest expected Dice
    first (ties: lowest raw score first); empty without a quality model, quality rows or an evaluation summary."""
    model = recipe.quality
    candidates = {candidate.name: candidate for candidate in recipe.candidates}
    if model is None or recipe.selected not in candidates:
        return []
    summary = EvaluationSummary.read_if_present(work.root / candidates[recipe.selected].folder)
    raw = raw_scores_of(work, recipe.configurations)
    if summary is None or not raw:
        return []
    reasons = _reasons_of(work, recipe.configurations)
    cases = []
    for evaluation in summary.per_case:
        if evaluation.case not in raw:
            continue
        expected = model.expected_dice(raw[evaluation.case])
        cases.append(CrossValidationCase(
            case=evaluation.case, raw_score=raw[evaluation.case], expected_dice=expected, dice=case_dice(evaluation),
            reasons=tuple(reasons.get(evaluation.case, ())),
            flagged=model.flag_below is not None and expected < model.flag_below,
        ))
    return sorted(cases, key=lambda entry: (entry.expected_dice, entry.raw_score, entry.case))


def risk_coverage_curves(cases: Sequence[CrossValidationCase]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Coverage, risk and AURC of the quality score (the raw score: the calibration keeps its order but pools
    ties), the constant score (its risk is the mean risk at every coverage) and the oracle (the true Dice)."""
    dice = [entry.dice for entry in cases]
    scores = {
        "quality score": [entry.raw_score for entry in cases],
        "constant score": [0.0] * len(cases),
        "oracle (true Dice)": dice,
    }
    return {name: (*risk_coverage(values, dice), aurc(values, dice)) for name, values in scores.items()}


def risk_coverage_figure(cases: Sequence[CrossValidationCase]) -> Figure:
    """Risk (mean 1 - Dice of the cases kept) against coverage (the share kept, most trusted first): a useful score
    stays low until the failures, which it keeps for last; AURC in the legend."""
    figure = new_figure(width_inches=8.0, height_inches=4.5)
    axis = figure.add_subplot()
    styles = {"quality score": "-", "constant score": "--", "oracle (true Dice)": ":"}
    highest = 0.0
    for index, (name, (coverage, risk, area)) in enumerate(risk_coverage_curves(cases).items()):
        axis.plot(coverage, risk, styles[name], color=SERIES_COLOURS[index], linewidth=2,
                  marker="o" if len(cases) <= 30 else None, markersize=3, label=f"{name}: AURC {area:.4f}")
        highest = max(highest, float(risk.max(initial=0.0)))
    axis.set_xlim(0.0, 1.0)
    axis.set_ylim(0.0, max(1.15 * highest, 0.05))  # room above the constant score's line; a flat zero stays visible
    axis.set_xlabel("coverage (share of cases kept, most trusted first)")
    axis.set_ylabel("risk (mean 1 - Dice of the kept cases)")
    axis.set_title(f"Risk-coverage on {len(cases)} cross-validation cases")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right", fontsize=9)  # risk rises to the right: that corner is free
    return figure


def _threshold_paragraph(model: QualityModel, cases: Sequence[CrossValidationCase]) -> str:
    calibration = (f"The calibration (raw score to expected Dice, isotonic) was fitted on {model.fitted_on} "
                   "cross-validation cases, so their expected Dice is in-sample; no test case's label is used."
                   if model.calibrated else "No calibration was fitted: the expected Dice is the raw score.")
    if model.flag_below is None:
        return (f"No threshold is recorded in inference.json: `autoseg predict --flag-below X` sets one. "
                f"{calibration}")
    median = (f" ({FAILURE_FRACTION:g} x the median cross-validation Dice, "
              f"{format_number(model.cross_validation_median_dice)})"
              if model.cross_validation_median_dice is not None else "")
    flagged = sum(entry.flagged for entry in cases)
    return (f"`autoseg predict` flags a case whose expected Dice is below {format_number(model.flag_below)}{median}; "
            f"--flag-below X sets another threshold. {flagged} of {len(cases)} cross-validation cases fall below it. "
            f"{calibration}")


def quality_section(work: WorkFolder, recipe: InferenceRecipe) -> ReportSection | None:
    """The "Quality estimates" section, or None when the run has no quality model or no quality rows."""
    cases = cross_validation_quality(work, recipe)
    if not cases or recipe.quality is None:
        return None
    section = ReportSection(TITLE, paragraphs=[_threshold_paragraph(recipe.quality, cases)])
    section.add_table(
        ["case", "expected Dice", "true Dice", "reasons", "flagged"],
        [[entry.case, entry.expected_dice, entry.dice, "; ".join(entry.reasons) or None,
          "yes" if entry.flagged else "no"] for entry in cases[:CASES_TO_CHECK]],
        caption=f"cases to check first: the {min(CASES_TO_CHECK, len(cases))} with the lowest expected Dice",
    )
    section.add_image(FIGURE_CAPTION, figure_png(risk_coverage_figure(cases)), wide=True)
    return section
