"""The HTML report is one self-contained file: tables, inlined images, no external references; its figures show the
cross-validation numbers and how well the quality estimate ranked the cases, and a real browser (headless Chromium)
decodes every image in it."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from optional import require_browser
from PIL import Image
from scipy import ndimage

from autoseg.evaluation.folders import evaluate_against_ground_truth
from autoseg.evaluation.overlay import png_bytes
from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.inference.quality_table import write_quality_table
from autoseg.io.images import read_image, write_image
from autoseg.pipeline.plan_dataset import plan_dataset
from autoseg.pipeline.report import SELECTED_MARK, build_report, class_dice_figure
from autoseg.pipeline.report_quality import (
    FIGURE_CAPTION,
    cross_validation_quality,
    quality_section,
    risk_coverage_figure,
)
from autoseg.planning.layout import ComputeBudget, Layout, Variant, compute_plan
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.records.quality_model import QualityModel
from autoseg.records.training_log import LOG_FILE, write_log
from autoseg.records.work_folder import WorkFolder
from autoseg.report import ReportSection, write_report
from autoseg.training.progress_plot import draw_progress
from autoseg.training.training_log import update_moving_average
from autoseg.utils.files import read_json, write_json

CASES = 6
# The raw quality scores the two configurations' validation predictions wrote (quality.csv), case by case: the
# ensemble's is their mean, which ranks the second case lowest where "2d" alone ranks the first one lowest.
RAW_SCORES = {"2d": (0.2, 0.5, 0.9, 0.95, 0.7, 1.0), "3d_fullres": (0.9, 0.5, 0.95, 0.9, 0.8, 1.0)}
REASONS = {("2d", 0): "posterior: mirror passes agree 0.41", ("3d_fullres", 1): "anterior: in its largest piece 0.80"}
# Expected Dice of the ensemble's mean raw scores: 0.65, 0.6, 0.95, 0.95, 0.825, 0.95; two fall below 0.72.
QUALITY_MODEL = QualityModel(raw_scores=(0.4, 0.6, 0.9), expected=(0.5, 0.7, 0.95), flag_below=0.72, fitted_on=CASES,
                             cross_validation_median_dice=0.9)
IMAGE_SOURCES = re.compile(r'src="data:image/png;base64,([^"]+)"')


def test_report_is_self_contained_and_shows_every_part(tmp_path: Path) -> None:
    png = png_bytes(np.full((2, 3, 3), 200, dtype=np.uint8))
    section = ReportSection("Model selection", paragraphs=["best: 3d_fullres <script>"])
    section.add_table(["configuration", "mean Dice"], [["2d", 0.81], ["3d_fullres", 0.88]], highlight_row=1,
                      caption="candidates")
    section.add_image("best case", png)
    section.add_image("curve", png, wide=True)
    section.add_image("missing curve", tmp_path / "nope.png")
    path = write_report(tmp_path / "report.html", title="Dataset X", sections=[section])
    text = path.read_text()
    assert "<td>0.8800</td>" in text and 'class="best"' in text and "<caption>candidates</caption>" in text
    assert "&lt;script&gt;" in text  # user-provided text is escaped
    assert "nope.png not found" in text
    assert [base64.b64decode(item) for item in IMAGE_SOURCES.findall(text)] == [png, png]
    assert text.count('<figure class="wide">') == 1  # plots get the page width, overlays sit side by side
    assert not re.search(r'(src|href)="(http|//|/)', text)  # opens offline: nothing is fetched


# --- a working folder as `autoseg run` leaves it, built from real Hippocampus cases --------------------------------


def _realistic_log(epochs: int, class_names: list[str]) -> list[dict]:
    """A training log shaped like the loop's: falling loss, rising noisy pseudo-Dice, poly learning rate."""
    rng = np.random.default_rng(1)
    records, moving_average = [], None
    for epoch in range(epochs):
        progress = 1.0 - np.exp(-epoch / 8)
        dice = {name: float(np.clip(0.85 * progress + rng.normal(0, 0.03), 0, 1)) for name in class_names}
        mean = float(np.mean(list(dice.values())))
        moving_average = update_moving_average(moving_average, mean)
        records.append({
            "epoch": epoch, "train_loss": 0.3 - 0.9 * progress,
            "val_loss": None if epoch == 5 else 0.35 - 0.8 * progress,
            "pseudo_dice": dice, "mean_pseudo_dice": mean, "ema_pseudo_dice": moving_average,
            "learning_rate": 0.01 * (1 - epoch / epochs) ** 0.9, "epoch_seconds": 40.0 + rng.normal(0, 3),
            "train_seconds": 33.0, "data_wait_seconds": 4.0 + rng.normal(0, 1), "iterations": 250,
        })
    return records


def _write_predictions(folder: Path, ground_truth: Path, change) -> None:
    """One prediction per reference: the reference label map changed by ``change(identifier, labels)``."""
    folder.mkdir(parents=True)
    for reference in sorted(ground_truth.glob("*.nii.gz")):
        image = read_image(reference)
        identifier = reference.name.removesuffix(".nii.gz")
        write_image(change(identifier, np.rint(image.array).astype(np.uint8)), image.geometry, folder / reference.name)


def _eroded(_identifier: str, labels: np.ndarray) -> np.ndarray:
    result = np.zeros_like(labels)
    for value in (1, 2):
        result[ndimage.binary_erosion(labels == value)] = value
    return result


def _posterior_missed_in_first_case(identifier: str, labels: np.ndarray) -> np.ndarray:
    return np.where(labels == 2, 0, labels) if identifier.endswith("_001") else labels


@pytest.fixture(scope="module")
def report_work(tmp_path_factory: pytest.TempPathFactory, hippocampus_root: Path) -> Path:
    """``WORK/Dataset004_Hippocampus`` after a run: plans, two folds' logs and curves, three candidates evaluated on
    six real cases (predictions made by editing the references), each configuration's ``crossval/quality.csv``,
    ``postprocessing.json`` and ``inference.json`` with a quality model."""
    base = tmp_path_factory.mktemp("report")
    raw = base / "raw" / hippocampus_root.name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for label in sorted((hippocampus_root / "labelsTr").glob("*.nii.gz"))[:CASES]:
        image_name = label.name.replace(".nii.gz", "_0000.nii.gz")
        shutil.copyfile(label, raw / "labelsTr" / label.name)
        shutil.copyfile(hippocampus_root / "imagesTr" / image_name, raw / "imagesTr" / image_name)
    meta = json.loads((hippocampus_root / "dataset.json").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps({**meta, "numTraining": CASES}), encoding="utf-8")
    work = base / "work" / hippocampus_root.name
    plan_dataset(raw, WorkFolder(work), workers=1)
    shutil.copytree(raw / "labelsTr", work / "ground_truth")

    for fold in (0, 1):
        fold_folder = work / "models" / "3d_fullres" / f"fold_{fold}"
        fold_folder.mkdir(parents=True)
        records = _realistic_log(12 + fold, ["anterior", "posterior"])
        write_log(fold_folder / LOG_FILE, records)
        draw_progress(fold_folder / "progress.png", records)
        write_json(fold_folder / "training_summary.json", {
            "epochs_completed": len(records), "elapsed_seconds": sum(r["epoch_seconds"] for r in records),
            "best_ema_pseudo_dice": max(r["ema_pseudo_dice"] for r in records),
        })

    changes = {"2d": _posterior_missed_in_first_case, "3d_fullres": _eroded, "2d+3d_fullres": lambda _i, labels: labels}
    folders = {"2d": "models/2d/crossval", "3d_fullres": "models/3d_fullres/crossval",
               "2d+3d_fullres": "ensembles/2d+3d_fullres/crossval"}
    cases = [path.name.removesuffix(".nii.gz") for path in sorted((work / "ground_truth").glob("*.nii.gz"))]
    candidates = []
    for name, change in changes.items():
        _write_predictions(work / folders[name], work / "ground_truth", change)
        summary = evaluate_against_ground_truth(WorkFolder(work), work / folders[name], cases=cases, workers=1)
        candidates.append({
            "name": name, "folder": folders[name], "foreground_dice": summary.foreground_dice,
            "dice_per_class": summary.dice_per_class,
        })
    selected = max(candidates, key=lambda candidate: candidate["foreground_dice"])["name"]
    # Decided on the imperfect "2d" candidate: its evidence holds Dice values with many decimals, as a real run's.
    determine_postprocessing(work / folders["2d"], work / "ground_truth", cases=cases, workers=1,
                             output_file=work / "postprocessing.json", progress=False)
    for configuration, scores in RAW_SCORES.items():
        write_quality_table(work / folders[configuration] / "quality.csv", [
            {"case": case, "expected_dice": f"{score:.4f}", "raw_score": f"{score:.4f}", "flagged": "0",
             "reasons": REASONS.get((configuration, index), "")}
            for index, (case, score) in enumerate(zip(cases, scores, strict=True))
        ])
    write_json(work / "inference.json", {
        "selected": selected, "models": [{"configuration": c, "folds": [0, 1]} for c in selected.split("+")],
        "ensemble": "+" in selected, "checkpoint": "final", "postprocessing": "postprocessing.json",
        "candidates": candidates, "quality": QUALITY_MODEL.to_json(),
    })
    build_report(WorkFolder(work))
    return work


def _embedded_images(report_text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in IMAGE_SOURCES.findall(report_text)]


def test_report_of_a_run_shows_curves_dice_charts_and_overlays(report_work: Path) -> None:
    text = (report_work / "report.html").read_text(encoding="utf-8")
    for heading in ("Plan", "Training curves", "Model selection", "Cross-validation", "Quality estimates",
                    "Best and worst"):
        assert f"<h2>{heading}" in text
    alts = re.findall(r'<img alt="([^"]*)"', text)
    assert alts[:2] == ["3d_fullres fold_0", "3d_fullres fold_1"]
    assert "mean Dice per class" in alts and "Dice of each validation case" in alts and FIGURE_CAPTION in alts
    assert sum(alt.startswith(("best:", "worst:")) for alt in alts) == 4  # prediction and reference, twice
    images = _embedded_images(text)
    assert len(images) == len(alts) == 9
    assert images[0].size == (900, 1100)  # progress.png, drawn at 100 dpi
    # Each candidate's table is captioned with its name; the winner (the unchanged references) is marked.
    assert f"<caption>2d+3d_fullres{SELECTED_MARK}: {CASES} cases</caption>" in text


def _section(report_text: str, heading: str) -> str:
    """The HTML of one section: from its heading to the next one."""
    start = report_text.index(f"<h2>{heading}</h2>")
    end = report_text.find("<h2>", start + 1)
    return report_text[start:end if end >= 0 else None]


def test_report_rounds_every_number_it_shows(report_work: Path) -> None:
    text = IMAGE_SOURCES.sub("", (report_work / "report.html").read_text(encoding="utf-8"))
    evidence = read_json(report_work / "postprocessing.json")["evidence"]
    assert re.search(r"\d\.\d{6,}", json.dumps(evidence))  # what the report is given has long floats ...
    assert re.findall(r"\d\.\d{6,}", text) == []  # ... and it shows none of them
    before, after = evidence["foreground_dice_before"], evidence["foreground_dice_after"]
    assert f"mean foreground Dice {before:.4f} -&gt; {after:.4f}" in _section(text, "Model selection")
    assert re.search(r"<td>3d_fullres</td><td>fold_0</td><td>12</td><td>\d+\.\d</td>", text)  # minutes: 1 decimal


def test_report_shows_the_time_budget_the_plans_were_fitted_to(report_work: Path, tmp_path: Path) -> None:
    assert "no time budget" in _section((report_work / "report.html").read_text(encoding="utf-8"), "Time budget")

    work = tmp_path / report_work.name
    shutil.copytree(report_work, work)
    reason = "training 3d_fullres alone on one fold: every configuration on every fold would get too few steps"
    variant = Variant({}, 2, 0.5, ("spacing 1.5 x 1.5 x 1.5 mm (1.5x the median)", "16 features in the first stage"))
    layout = Layout(("3d_fullres",), (0,), 1200.0, {"3d_fullres": variant}, (reason,))
    budget = ComputeBudget(training_seconds=1200.0, seconds_per_iteration=lambda *_: 0.5, device="cpu",
                           label_round_trip=lambda *_: {}, budget_seconds=1800.0)
    plans = read_json(work / "plans.json")
    write_json(work / "plans.json", {**plans, "compute": compute_plan(layout, budget, {1.5: {1: 0.9987}}).to_json()})
    section = html.unescape(_section(build_report(WorkFolder(work)).read_text(encoding="utf-8"), "Time budget"))
    assert "fitted to a time budget of 30 min on cpu" in section  # the budget
    assert "3d_fullres: about 0.50 s per step, 2400 steps" in section  # the predicted steps
    assert f"why: {reason}" in section and "16 features in the first stage" in section  # and why
    assert "no time budget" not in section


def test_dice_bar_chart_shows_each_candidates_cross_validation_dice(report_work: Path) -> None:
    recipe = read_json(report_work / "inference.json")
    summaries = {c["name"]: EvaluationSummary.read(report_work / c["folder"]) for c in recipe["candidates"]}
    axis = class_dice_figure(summaries, recipe["selected"]).axes[0]
    assert axis.get_xlabel() == "class" and axis.get_ylabel().startswith("Dice")
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["anterior", "posterior", "foreground mean"]
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == ["2d", "3d_fullres", f"2d+3d_fullres{SELECTED_MARK}"]
    heights = [bar.get_height() for bar in axis.patches]
    expected = [value for c in recipe["candidates"] for value in
                (*c["dice_per_class"].values(), c["foreground_dice"])]
    assert heights == pytest.approx(expected)
    assert heights[-3:] == pytest.approx([1.0, 1.0, 1.0])  # the unchanged references score 1
    assert heights[1] < heights[0]  # "2d" missed the posterior class in one case


def _cases(work: Path) -> list[str]:
    return sorted(path.name.removesuffix(".nii.gz") for path in (work / "ground_truth").glob("*.nii.gz"))


def _table_rows(section_html: str) -> list[list[str]]:
    body = section_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_report_lists_the_cases_to_check_first_by_the_ensembles_expected_dice(report_work: Path) -> None:
    text = (report_work / "report.html").read_text(encoding="utf-8")
    section = html.unescape(_section(text, "Quality estimates"))
    cases = _cases(report_work)
    rows = _table_rows(section)
    # The ensemble's raw score is its members' mean: the second case (0.5) before the first (0.55 = (0.2 + 0.9) / 2).
    assert [row[0] for row in rows] == [cases[1], cases[0], cases[4], cases[2], cases[3], cases[5]]
    assert rows[0][1:3] == ["0.6000", "1.0000"]  # expected Dice, true Dice (the ensemble is the references)
    assert rows[0][3] == "anterior: in its largest piece 0.80 (3d_fullres)"  # reasons name the member
    assert rows[1][3] == "posterior: mirror passes agree 0.41 (2d)"
    assert [row[4] for row in rows] == ["yes", "yes", "no", "no", "no", "no"]  # flagged below 0.72
    assert "below 0.7200 (0.8 x the median cross-validation Dice, 0.9000)" in section
    assert f"2 of {CASES} cross-validation cases fall below it" in section and f"fitted on {CASES}" in section
    image = re.search(rf'<img alt="{re.escape(FIGURE_CAPTION)}" src="data:image/png;base64,([^"]+)"', section)
    assert image, "no risk-coverage plot in the section"
    assert Image.open(io.BytesIO(base64.b64decode(image.group(1)))).size == (800, 450)


def test_risk_coverage_shows_a_score_that_ranks_the_failed_case_last_as_good_as_the_oracle(report_work: Path) -> None:
    recipe = InferenceRecipe.read(report_work / "inference.json")
    only_2d = dataclasses.replace(recipe, selected="2d", models=(RecipeModel("2d", (0, 1)),))
    cases = cross_validation_quality(WorkFolder(report_work), only_2d)
    failed = _cases(report_work)[0]  # "2d" missed its posterior class; quality.csv scores it lowest (0.2)
    assert cases[0].case == failed and cases[0].dice < 0.9 and all(entry.dice == 1.0 for entry in cases[1:])
    legend = [entry.get_text() for entry in risk_coverage_figure(cases).axes[0].get_legend().get_texts()]
    area = {label.split(":")[0]: float(label.rsplit(" ", 1)[1]) for label in legend}
    assert list(area) == ["quality score", "constant score", "oracle (true Dice)"]
    assert area["quality score"] == area["oracle (true Dice)"] < area["constant score"]
    assert area["constant score"] == pytest.approx(np.mean([1 - entry.dice for entry in cases]), abs=1e-4)


def test_no_quality_section_without_a_quality_model_or_quality_rows(report_work: Path) -> None:
    work, recipe = WorkFolder(report_work), InferenceRecipe.read(report_work / "inference.json")
    assert quality_section(work, recipe) is not None
    assert quality_section(work, dataclasses.replace(recipe, quality=None)) is None
    unscored = dataclasses.replace(recipe, selected="3d_fullres", models=(RecipeModel("3d_lowres", (0, 1)),))
    assert quality_section(work, unscored) is None  # no crossval/quality.csv for this configuration


# --- the report in a real browser ------------------------------------------------------------------------------------

# Appended to a copy of the report: after every image has loaded (or failed), write each image's decoded size into the
# page, where --dump-dom can read it.
IMAGE_CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const sizes = Array.from(document.images).map((image) => [image.naturalWidth, image.naturalHeight]);
  const output = document.createElement("pre");
  output.id = "autoseg-decoded-images";
  output.textContent = JSON.stringify(sizes);
  document.body.appendChild(output);
});
</script>
"""


@pytest.fixture(scope="session")  # session: looked for before the real data, so a missing browser is named first
def chromium() -> Path:
    """A Chromium to open the report in; without one the test is skipped, or fails where every test must run."""
    return require_browser()


def _run_headless(chromium: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *arguments,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, f"chromium failed ({completed.returncode}): {completed.stderr[-2000:]}"
    return completed


def test_report_renders_in_headless_chromium_with_every_image_decoded(
    chromium: Path, report_work: Path, tmp_path: Path
) -> None:
    report = report_work / "report.html"
    text = report.read_text(encoding="utf-8")
    expected_sizes = [list(image.size) for image in _embedded_images(text)]

    checked = tmp_path / "report_checked.html"
    checked.write_text(text.replace("</body>", IMAGE_CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = _run_headless(chromium, tmp_path / "profile_dom", "--dump-dom", "--virtual-time-budget=5000",
                        checked.as_uri()).stdout
    found = re.search(r'<pre id="autoseg-decoded-images">([^<]*)</pre>', dom)
    assert found, f"the image check did not run; page as dumped: {dom[-1000:]}"
    decoded_sizes = json.loads(found.group(1))
    assert decoded_sizes == expected_sizes  # every <img> decoded, at the size of the PNG it embeds
    assert "<h2>Quality estimates</h2>" in dom and "cases to check first" in dom
    assert decoded_sizes[re.findall(r'<img alt="([^"]*)"', text).index(FIGURE_CAPTION)] == [800, 450]

    screenshot = tmp_path / "report.png"
    _run_headless(chromium, tmp_path / "profile_screenshot", "--screenshot=" + str(screenshot),
                  "--window-size=1200,3000", "--hide-scrollbars", report.as_uri())
    with Image.open(screenshot) as picture:
        assert picture.size == (1200, 3000)
        pixels = np.asarray(picture.convert("RGB"))
    colours = np.unique(pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32))
    assert len(colours) > 100, "the screenshot is (nearly) one colour: the page did not render"
    assert (pixels < 128).all(axis=-1).mean() > 0.005  # dark text and plot lines, not a blank page
