"""Assemble the run report: plan, training curves, cross-validation metrics per class, selection, quality estimates
(``report_quality``), overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from autoseg.errors import UserError
from autoseg.evaluation.folders import SUMMARY_FILE_NAME
from autoseg.evaluation.overlay import png_bytes, render_overlay
from autoseg.io.images import read_image
from autoseg.pipeline.report_quality import quality_section
from autoseg.planning.table import configuration_rows, format_compute
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.plans import Plans, load_plans
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.training_summary import TrainingSummary
from autoseg.records.work_folder import POSTPROCESSING_FILE, WorkFolder
from autoseg.report import ReportSection, format_number, write_report
from autoseg.report.figures import SERIES_COLOURS, figure_png, grouped_bar_chart, new_figure

SELECTED_MARK = " (selected)"


def _plan_section(plans: Plans) -> ReportSection:
    budget = f"preset {plans.get('preset')}, GPU budget {plans.get('gpu_memory_gb'):g} GB"
    section = ReportSection("Plan", paragraphs=[budget])
    names = plans.names
    columns = {name: dict(configuration_rows(plans.configuration(name))) for name in names}
    labels = list(dict.fromkeys(label for rows in columns.values() for label in rows))
    section.add_table(["", *names], [[label, *(columns[n].get(label, "") for n in names)] for label in labels])
    return section


def _compute_section(plans: Plans) -> ReportSection:
    """The time budget the plans were fitted to: what trains, the steps each fold is predicted to get, and why (the
    text ``autoseg plan --show`` prints)."""
    section = ReportSection("Time budget")
    if plans.compute is None:
        section.paragraphs.append("no time budget in plans.json: the plans were fitted to the memory budget alone")
        return section
    section.paragraphs.extend(line.strip() for line in format_compute(plans.compute))
    return section


def _training_section(work: WorkFolder) -> ReportSection:
    section = ReportSection("Training curves")
    for progress in work.progress_plots():
        section.add_image(f"{progress.parent.parent.name} {progress.parent.name}", progress, wide=True)
    rows = []
    for summary_path in work.training_summaries():
        summary = TrainingSummary.read(summary_path)
        validation = summary.after_training.get("predict_validation") or {}
        rows.append([
            summary_path.parent.parent.name, summary_path.parent.name, summary.epochs_completed,
            f"{float(summary.elapsed_seconds or 0) / 60:.1f}", summary.best_ema_pseudo_dice,
            validation.get("mean_dice"),
        ])
    if rows:
        section.add_table(
            ["configuration", "fold", "epochs", "minutes", "best EMA pseudo-Dice", "validation Dice"], rows
        )
    return section


def _candidate_label(name: str, selected: str) -> str:
    return name + SELECTED_MARK if name == selected else name


def class_dice_figure(summaries: dict[str, EvaluationSummary], selected: str) -> Figure:
    """Bar chart of the mean cross-validation Dice of every class (and the foreground mean), one bar per candidate:
    shows whether the winner wins on every class or trades one class for another."""
    class_names = list(
        dict.fromkeys(name for summary in summaries.values() for name in summary.dice_per_class)
    )
    groups = [*class_names, "foreground mean"]
    series = {}
    for name, summary in summaries.items():
        per_class = summary.dice_per_class
        series[_candidate_label(name, selected)] = [
            *(per_class.get(class_name) for class_name in class_names), summary.foreground_dice
        ]
    width = min(11.0, max(8.0, 3.5 + 0.35 * len(groups) * max(1, len(series))))
    figure = new_figure(width_inches=width, height_inches=4.5)
    axis = figure.add_subplot()
    grouped_bar_chart(axis, groups, series)
    axis.set_ylim(0.0, 1.15)  # room above a Dice of 1 for the value labels
    axis.set_yticks(np.linspace(0.0, 1.0, 6))
    axis.set_xlabel("class")
    axis.set_ylabel("Dice (mean over validation cases)")
    axis.set_title("Cross-validation Dice per class and candidate")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(title="candidate", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return figure


def case_dice_figure(summaries: dict[str, EvaluationSummary], selected: str) -> Figure:
    """Per-case mean Dice of every candidate as a box plot with each case as a dot: a mean can hide a few failed
    cases, which show here as outliers near zero."""
    names = list(summaries)
    values = [[case.mean_dice for case in summaries[name].per_case if case.mean_dice is not None]
              for name in names]
    figure = new_figure(width_inches=min(11.0, max(6.0, 2.0 + 1.3 * len(names))), height_inches=4.5)
    axis = figure.add_subplot()
    positions = np.arange(1, len(names) + 1)
    drawn = [index for index, case_values in enumerate(values) if case_values]
    if drawn:
        axis.boxplot([values[i] for i in drawn], positions=positions[drawn], widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)  # fixed seed: the same report twice looks the same
    for index, case_values in enumerate(values):
        offsets = jitter.uniform(-0.12, 0.12, len(case_values))
        axis.scatter(positions[index] + offsets, case_values, s=12, alpha=0.6,
                     color=SERIES_COLOURS[index % len(SERIES_COLOURS)], zorder=3)
    axis.set_xticks(positions, [_candidate_label(name, selected) for name in names],
                    rotation=20 if len(names) > 3 else 0)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("candidate")
    axis.set_ylabel("Dice per case (mean over classes)")
    axis.set_title("Cross-validation Dice of each case")
    axis.grid(True, axis="y", alpha=0.3)
    return figure


def _candidate_summaries(work: WorkFolder, recipe: InferenceRecipe) -> dict[str, EvaluationSummary]:
    """Each candidate's cross-validation ``summary.json`` by name, for the candidates that have one."""
    summaries = {}
    for candidate in recipe.candidates:
        summary = EvaluationSummary.read_if_present(work.root / candidate.folder / SUMMARY_FILE_NAME)
        if summary is not None:
            summaries[candidate.name] = summary
    return summaries


def _metrics_section(work: WorkFolder, recipe: InferenceRecipe) -> ReportSection:
    section = ReportSection("Cross-validation (mean per class)")
    summaries = _candidate_summaries(work, recipe)
    if summaries:
        section.add_image("mean Dice per class", figure_png(class_dice_figure(summaries, recipe.selected)),
                          wide=True)
        section.add_image("Dice of each validation case", figure_png(case_dice_figure(summaries, recipe.selected)),
                          wide=True)
    for name, summary in summaries.items():
        metrics = ["dice", "iou", "precision", "recall", "hd95", "assd", "normalized_surface_dice"]
        present = [m for m in metrics if m in summary.foreground_mean]
        rows = [[entry["name"], *(entry.get(m) for m in present)] for entry in summary.mean.values()]
        rows.append(["foreground mean", *(summary.foreground_mean.get(m) for m in present)])
        caption = f"{_candidate_label(name, recipe.selected)}: {len(summary.per_case)} cases"
        section.add_table(["class", *present], rows, caption=caption)
    return section


def _selection_section(work: WorkFolder, recipe: InferenceRecipe) -> ReportSection:
    section = ReportSection("Model selection")
    names = [c.name for c in recipe.candidates]
    section.add_table(
        ["candidate", "mean foreground Dice"],
        [[c.name, c.foreground_dice] for c in recipe.candidates],
        highlight_row=names.index(recipe.selected),
    )
    postprocessing_path = work.root / (recipe.postprocessing or POSTPROCESSING_FILE)
    if postprocessing_path.is_file():
        decision = PostprocessingDecision.read(postprocessing_path)
        evidence = decision.evidence or {}
        per_class = [list(item) if isinstance(item, tuple) else item for item in decision.keep_largest_per_class]
        section.paragraphs.append(
            f"post-processing: keep largest foreground component: {decision.keep_largest_foreground}; "
            f"per class: {per_class or 'none'}; mean foreground Dice "
            f"{format_number(evidence.get('foreground_dice_before'))} -> "
            f"{format_number(evidence.get('foreground_dice_after'))}"
        )
    return section


def _overlay_section(work: WorkFolder, recipe: InferenceRecipe) -> ReportSection:
    section = ReportSection("Best and worst validation cases (prediction | reference)")
    selected = recipe.candidate(recipe.selected)
    summary = EvaluationSummary.read(work.root / selected.folder / SUMMARY_FILE_NAME)
    scored = [(case.mean_dice, case) for case in summary.per_case if case.mean_dice is not None]
    if not scored:
        return section
    scored.sort(key=lambda item: item[0])
    dataset = work.read_dataset()
    chosen = [("best", scored[-1]), ("worst", scored[0])] if len(scored) > 1 else [("only", scored[0])]
    for title, (dice, case) in chosen:
        image = read_image(dataset.case(case.case).images[0])
        prediction = read_image(case.prediction).array
        reference = read_image(case.reference).array
        # The same slice for prediction and reference: the one where the reference has most foreground.
        slice_index = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))
        for kind, labels in (("prediction", prediction), ("reference", reference)):
            rgb = render_overlay(image.array, labels, slice_index=slice_index, spacing=image.geometry.spacing)
            section.add_image(f"{title}: {case.case} ({kind}, mean Dice {dice:.3f})", png_bytes(rgb))
    return section


def build_report(work: WorkFolder) -> Path:
    """Write ``WORK/<dataset>/report.html`` from what the run left on disk; returns its path."""
    recipe = InferenceRecipe.read(work.inference_recipe)
    if recipe is None:
        raise UserError(f"{work.inference_recipe}: not found; run `autoseg find-best` before the report.")
    dataset = work.read_dataset()
    plans = load_plans(work.plans)
    sections = [
        _plan_section(plans),
        _compute_section(plans),
        _training_section(work),
        _selection_section(work, recipe),
        _metrics_section(work, recipe),
        quality_section(work, recipe),  # None without a quality model or quality.csv
        _overlay_section(work, recipe),
    ]
    return write_report(
        work.report,
        title=f"autoseg report: {dataset.name}",
        sections=[section for section in sections if section is not None],
        footer=f"selected: {recipe.selected}; predict with `autoseg predict -i IN -o OUT -m {work}`",
    )
