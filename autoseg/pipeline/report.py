"""Assemble the run report: plan, training curves, cross-validation metrics per class, selection, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.data.dataset import RawDataset
from autoseg.evaluation.folders import SUMMARY_FILE_NAME
from autoseg.report import ReportSection, write_report
from autoseg.utils.files import read_json

REPORT_NAME = "report.html"


def _plan_section(work: Path) -> ReportSection:
    from autoseg.planning.plans import load_plans, resolve_configuration
    from autoseg.planning.table import configuration_rows

    plans = load_plans(work / "plans.json")
    budget = f"preset {plans.get('preset')}, GPU budget {plans.get('gpu_memory_gb')} GB"
    section = ReportSection("Plan", paragraphs=[budget])
    names = list(plans["configurations"])
    columns = {name: dict(configuration_rows(resolve_configuration(plans, name))) for name in names}
    labels = list(dict.fromkeys(label for rows in columns.values() for label in rows))
    section.add_table(["", *names], [[label, *(columns[n].get(label, "") for n in names)] for label in labels])
    return section


def _training_section(work: Path) -> ReportSection:
    section = ReportSection("Training curves")
    for progress in sorted((work / "models").glob("*/fold_*/progress.png")):
        section.add_image(f"{progress.parent.parent.name} {progress.parent.name}", progress)
    rows = []
    for summary_path in sorted((work / "models").glob("*/fold_*/training_summary.json")):
        summary = read_json(summary_path)
        validation = summary.get("after_training", {}).get("predict_validation") or {}
        rows.append([
            summary_path.parent.parent.name, summary_path.parent.name, summary.get("epochs_completed"),
            round(float(summary.get("elapsed_seconds") or 0) / 60, 1), summary.get("best_ema_pseudo_dice"),
            validation.get("mean_dice"),
        ])
    if rows:
        section.add_table(
            ["configuration", "fold", "epochs", "minutes", "best EMA pseudo-Dice", "validation Dice"], rows
        )
    return section


def _metrics_section(work: Path, recipe: dict) -> ReportSection:
    section = ReportSection("Cross-validation (mean per class)")
    for candidate in recipe["candidates"]:
        summary_path = work / candidate["folder"] / SUMMARY_FILE_NAME
        if not summary_path.is_file():
            continue
        summary = read_json(summary_path)
        metrics = ["dice", "iou", "precision", "recall", "hd95", "assd", "normalized_surface_dice"]
        present = [m for m in metrics if m in summary["foreground_mean"]]
        rows = [[entry["name"], *(entry.get(m) for m in present)] for entry in summary["mean"].values()]
        rows.append(["foreground mean", *(summary["foreground_mean"].get(m) for m in present)])
        section.paragraphs.append(f"{candidate['name']} ({len(summary['per_case'])} cases)")
        section.add_table(["class", *present], rows)
    return section


def _selection_section(work: Path, recipe: dict) -> ReportSection:
    section = ReportSection("Model selection")
    names = [c["name"] for c in recipe["candidates"]]
    section.add_table(
        ["candidate", "mean foreground Dice"],
        [[c["name"], c["foreground_dice"]] for c in recipe["candidates"]],
        highlight_row=names.index(recipe["selected"]),
    )
    postprocessing_path = work / recipe.get("postprocessing", "postprocessing.json")
    if postprocessing_path.is_file():
        decision = read_json(postprocessing_path)
        section.paragraphs.append(
            f"post-processing: keep largest foreground component: {decision['keep_largest_foreground']}; "
            f"per class: {decision['keep_largest_per_class'] or 'none'}; mean foreground Dice "
            f"{decision['evidence']['foreground_dice_before']} -> {decision['evidence']['foreground_dice_after']}"
        )
    return section


def _overlay_section(work: Path, recipe: dict) -> ReportSection:
    from autoseg.evaluation.overlay import png_bytes, render_overlay
    from autoseg.io.images import read_image

    section = ReportSection("Best and worst validation cases (prediction | reference)")
    selected = next(c for c in recipe["candidates"] if c["name"] == recipe["selected"])
    summary = read_json(work / selected["folder"] / SUMMARY_FILE_NAME)
    scored = []
    for case in summary["per_case"]:
        values = [m["dice"] for m in case["metrics"].values() if m["dice"] is not None]
        if values:
            scored.append((float(np.mean(values)), case))
    if not scored:
        return section
    scored.sort(key=lambda item: item[0])
    dataset = RawDataset.from_dict(read_json(work / "dataset.json"))
    chosen = [("best", scored[-1]), ("worst", scored[0])] if len(scored) > 1 else [("only", scored[0])]
    for title, (dice, case) in chosen:
        image = read_image(dataset.case(case["case"]).images[0])
        prediction = read_image(case["prediction"]).array
        reference = read_image(case["reference"]).array
        # The same slice for prediction and reference: the one where the reference has most foreground.
        slice_index = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))
        for kind, labels in (("prediction", prediction), ("reference", reference)):
            rgb = render_overlay(image.array, labels, slice_index=slice_index, spacing=image.geometry.spacing)
            section.add_image(f"{title}: {case['case']} ({kind}, mean Dice {dice:.3f})", png_bytes(rgb))
    return section


def build_report(work: Path) -> Path:
    """Write ``WORK/<dataset>/report.html`` from what the run left on disk; returns its path."""
    recipe = read_json(work / "inference.json")
    dataset = RawDataset.from_dict(read_json(work / "dataset.json"))
    sections = [
        _plan_section(work),
        _training_section(work),
        _selection_section(work, recipe),
        _metrics_section(work, recipe),
        _overlay_section(work, recipe),
    ]
    return write_report(
        work / REPORT_NAME,
        title=f"autoseg report: {dataset.name}",
        sections=sections,
        footer=f"selected: {recipe['selected']}; predict with `autoseg predict -i IN -o OUT -m {work}`",
    )
