"""Metrics agree with analytic values and with direct computations; `autoseg evaluate` writes what users read."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from autoseg.cli import main
from autoseg.evaluation.folders import evaluate_folders
from autoseg.evaluation.metrics import compute_binary_metrics, penalty_distance_mm, surface_metrics, surface_voxels
from autoseg.evaluation.targets import EvaluationTarget, targets_from_dataset_json, targets_from_label_values
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.utils.files import dumps_json

HIPPOCAMPUS_CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_007")


def _radius_grid(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Physical distance in mm of every voxel centre from the centre of the array."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(g**2 for g in grids))


@pytest.mark.parametrize(("inner_radius", "outer_radius"), [(12.0, 17.0), (10.0, 19.0)])
def test_concentric_spheres_with_anisotropic_spacing_give_the_radius_difference(inner_radius, outer_radius):
    spacing = (1.5, 0.5, 0.75)
    radius = _radius_grid((36, 90, 60), spacing)
    inner, outer = radius <= inner_radius, radius <= outer_radius
    gap = outer_radius - inner_radius
    coarsest = max(spacing)

    metrics = compute_binary_metrics(inner, outer, spacing=spacing, tolerance_mm=1.0)

    # Surface voxels sit up to one voxel inside the true sphere, so the discrete answer is within half the
    # coarsest spacing of the analytic one.
    assert metrics["hd95_mm"] == pytest.approx(gap, abs=coarsest / 2)
    assert metrics["assd_mm"] == pytest.approx(gap, abs=coarsest / 2)
    assert metrics["nsd"] == 0.0
    assert compute_binary_metrics(inner, outer, spacing=spacing, tolerance_mm=gap + coarsest)["nsd"] == 1.0
    volume_ratio = (inner_radius / outer_radius) ** 3
    assert metrics["dice"] == pytest.approx(2 * volume_ratio / (1 + volume_ratio), rel=0.03)
    assert metrics["precision"] == 1.0
    # Symmetric: swapping prediction and reference changes no distance.
    swapped = compute_binary_metrics(outer, inner, spacing=spacing)
    assert swapped["hd95_mm"] == pytest.approx(metrics["hd95_mm"])
    assert swapped["assd_mm"] == pytest.approx(metrics["assd_mm"])


def test_concentric_discs_in_a_2d_image_use_the_in_plane_pixel_size():
    # HC18-like: a (1, H, W) image with 0.1 mm pixels; the slice axis must not create a surface.
    spacing = (1.0, 0.1, 0.1)
    radius = _radius_grid((1, 400, 400), spacing)
    small, large = radius <= 10.0, radius <= 13.0

    metrics = compute_binary_metrics(small, large, spacing=spacing, tolerance_mm=2.0)

    assert metrics["hd95_mm"] == pytest.approx(3.0, abs=0.1)
    assert metrics["assd_mm"] == pytest.approx(3.0, abs=0.1)
    assert metrics["nsd"] == 0.0
    identical = compute_binary_metrics(large, large, spacing=spacing)
    assert (identical["dice"], identical["hd95_mm"], identical["assd_mm"], identical["nsd"]) == (1.0, 0.0, 0.0, 1.0)


def test_a_cube_shifted_along_one_axis_is_that_far_away():
    spacing = (3.0, 0.8, 0.8)
    reference = np.zeros((20, 60, 60), dtype=bool)
    reference[5:15, 10:40, 10:40] = True
    prediction = np.roll(reference, 4, axis=2)  # 4 voxels * 0.8 mm along x
    metrics = compute_binary_metrics(prediction, reference, spacing=spacing, tolerance_mm=1.0)
    # 26 of 30 columns overlap.
    assert metrics["dice"] == pytest.approx(26 / 30)
    assert metrics["iou"] == pytest.approx(26 / 34)
    # Every surface voxel is within 3.2 mm of the other surface; the x faces (and the shifted side strips)
    # are exactly 3.2 mm away, and the side faces that overlap are 0 mm away.
    assert metrics["hd95_mm"] <= 3.2 + 1e-9
    assert surface_metrics(prediction, reference, spacing=spacing, percentile=100)["hd95_mm"] == pytest.approx(3.2)
    shifted_along_z = np.roll(reference, 1, axis=0)  # one slice = 3 mm
    assert surface_metrics(shifted_along_z, reference, spacing=spacing, percentile=100)["hd95_mm"] == pytest.approx(3.0)


def _brute_force_surface_metrics(prediction, reference, spacing, tolerance):
    """Nearest-neighbour search between surface voxel centres in mm, independent of distance transforms."""
    spacing = np.asarray(spacing)
    prediction_points = np.argwhere(surface_voxels(prediction)) * spacing
    reference_points = np.argwhere(surface_voxels(reference)) * spacing
    to_reference = cKDTree(reference_points).query(prediction_points)[0]
    to_prediction = cKDTree(prediction_points).query(reference_points)[0]
    both = np.concatenate([to_reference, to_prediction])
    return {
        "hd95_mm": max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95)),
        "assd_mm": both.mean(),
        "nsd": np.mean(both <= tolerance),
    }


def test_surface_metrics_match_a_brute_force_search_on_irregular_shapes():
    generator = np.random.default_rng(7)
    spacing = (2.5, 0.6, 0.9)
    shape = (24, 64, 48)
    reference = ndimage.gaussian_filter(generator.random(shape), 3) > 0.5
    prediction = ndimage.gaussian_filter(generator.random(shape), 3) > 0.5
    assert reference.any() and prediction.any()
    # 1.7 mm is no distance between two voxel centres of this grid, so rounding cannot decide the NSD.
    expected = _brute_force_surface_metrics(prediction, reference, spacing, 1.7)
    metrics = compute_binary_metrics(prediction, reference, spacing=spacing, tolerance_mm=1.7)
    for name in ("hd95_mm", "assd_mm", "nsd"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-9), name


def test_a_surface_exactly_at_the_tolerance_counts_as_within_it():
    # 3-4-5 triangle: voxel centres 0.9 mm and 1.2 mm apart on two axes are exactly 1.5 mm apart.
    spacing = (0.3, 0.3)
    reference = np.zeros((1, 20, 20), dtype=bool)
    reference[0, 10, 10] = True
    prediction = np.zeros_like(reference)
    prediction[0, 13, 14] = True
    metrics = compute_binary_metrics(prediction, reference, spacing=(1.0, *spacing), tolerance_mm=1.5)
    assert metrics["hd95_mm"] == pytest.approx(1.5)
    assert metrics["nsd"] == 1.0
    assert compute_binary_metrics(prediction, reference, spacing=(1.0, *spacing), tolerance_mm=1.49)["nsd"] == 0.0


def test_empty_masks_are_reported_as_documented():
    spacing = (2.0, 1.0, 1.0)
    empty = np.zeros((10, 20, 30), dtype=bool)
    blob = empty.copy()
    blob[3:6, 5:10, 5:10] = True

    both_empty = compute_binary_metrics(empty, empty, spacing=spacing)
    assert all(both_empty[name] is None for name in ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm", "nsd"))

    penalty = penalty_distance_mm((10, 20, 30), spacing)
    assert penalty == pytest.approx(np.sqrt(20**2 + 20**2 + 30**2))
    missed = compute_binary_metrics(empty, blob, spacing=spacing)
    assert (missed["dice"], missed["iou"], missed["recall"], missed["nsd"]) == (0.0, 0.0, 0.0, 0.0)
    assert missed["precision"] is None
    assert missed["hd95_mm"] == missed["assd_mm"] == pytest.approx(penalty)
    false_detection = compute_binary_metrics(blob, empty, spacing=spacing)
    assert (false_detection["dice"], false_detection["precision"], false_detection["recall"]) == (0.0, 0.0, None)
    assert false_detection["hd95_mm"] == pytest.approx(penalty)


def test_ignored_voxels_count_neither_as_errors_nor_as_hits():
    reference = np.zeros((1, 10, 10), dtype=np.uint8)
    reference[0, 2:8, 2:8] = 1
    reference[0, :, 8:] = 3  # ignore label: unannotated columns
    prediction = np.zeros_like(reference)
    prediction[0, 2:8, 2:10] = 1  # spills into the ignored columns only
    target = EvaluationTarget("thing", (1,))
    metrics = compute_binary_metrics(
        target.mask(prediction), target.mask(reference), spacing=(1, 1, 1), evaluated=reference != 3
    )
    assert metrics["dice"] == 1.0
    assert metrics["false_positives"] == 0


def _perturbed_prediction(label: np.ndarray, seed: int) -> np.ndarray:
    """A plausible imperfect prediction: shifted by one voxel, one class eroded, a spurious blob added."""
    generator = np.random.default_rng(seed)
    prediction = np.roll(label, int(generator.choice([-1, 1])), axis=int(generator.integers(0, label.ndim)))
    eroded = ndimage.binary_erosion(prediction == prediction.max())
    prediction[(prediction == prediction.max()) & ~eroded] = 0
    z = int(generator.integers(0, label.shape[0]))
    prediction[z, :3, :3] = 1
    return prediction


def _direct_dice_and_iou(prediction: np.ndarray, reference: np.ndarray, value: int) -> tuple[float, float]:
    p, r = prediction == value, reference == value
    intersection = np.logical_and(p, r).sum()
    return 2.0 * intersection / (p.sum() + r.sum()), intersection / np.logical_or(p, r).sum()


@pytest.fixture(scope="module")
def hippocampus_folders(tmp_path_factory, hippocampus_root):
    """Real Hippocampus references and perturbed predictions written with the references' geometry."""
    root = tmp_path_factory.mktemp("hippocampus_eval")
    predictions, references = root / "predictions", root / "references"
    for index, case in enumerate(HIPPOCAMPUS_CASES):
        reference = read_image(hippocampus_root / "labelsTr" / f"{case}.nii.gz")
        labels = np.rint(reference.array).astype(np.uint8)
        write_image(labels, reference.geometry, references / f"{case}.nii.gz")
        write_image(_perturbed_prediction(labels, index), reference.geometry, predictions / f"{case}.nii.gz")
    return predictions, references


def test_dice_and_iou_on_real_hippocampus_labels_agree_with_numpy(hippocampus_folders):
    predictions, references = hippocampus_folders
    summary = evaluate_folders(predictions, references, targets=targets_from_label_values([1, 2]))
    assert [case.case for case in summary.per_case] == list(HIPPOCAMPUS_CASES)
    for case in summary.per_case:
        prediction = read_image(predictions / f"{case.case}.nii.gz").array
        reference = read_image(references / f"{case.case}.nii.gz").array
        for value in (1, 2):
            dice, iou = _direct_dice_and_iou(prediction, reference, value)
            assert case.metrics[str(value)]["dice"] == pytest.approx(dice, rel=1e-12)
            assert case.metrics[str(value)]["iou"] == pytest.approx(iou, rel=1e-12)
            assert 0.0 < case.metrics[str(value)]["hd95_mm"] < 30.0
    class_means = [summary.mean[key]["dice"] for key in ("1", "2")]
    per_case_dice = [case.metrics["1"]["dice"] for case in summary.per_case]
    assert summary.mean["1"]["dice"] == pytest.approx(np.mean(per_case_dice))
    assert summary.foreground_mean["dice"] == pytest.approx(np.mean(class_means))


def test_dice_on_a_real_hc18_image_agrees_with_numpy_and_uses_its_pixel_size(hc18_root):
    reference = read_image(hc18_root / "labelsTr" / "005_HC.nii.gz")
    mask = reference.array > 0
    prediction = ndimage.binary_dilation(mask[0], iterations=10)[None]  # 10 pixels wider everywhere
    metrics = compute_binary_metrics(prediction, mask, spacing=reference.geometry.spacing, tolerance_mm=0.5)
    dice, _ = _direct_dice_and_iou(prediction, mask, True)
    assert metrics["dice"] == pytest.approx(dice)
    pixel = reference.geometry.spacing[1]
    # A 10-pixel dilation (cross structure, so diagonal steps are shorter) moves the surface by <= 10 pixels.
    assert 7 * pixel < metrics["assd_mm"] <= 10 * pixel + 1e-9
    assert metrics["hd95_mm"] <= 10 * pixel + 1e-9


def test_evaluate_command_writes_summary_and_csv(hippocampus_folders, tmp_path, capsys, hippocampus_root):
    predictions, references = hippocampus_folders
    output = tmp_path / "evaluation"
    code = main([
        "evaluate", str(predictions), str(references), "--dataset-json", str(hippocampus_root / "dataset.json"),
        "--tolerance", "2", "--workers", "2", "-o", str(output),
    ])
    assert code == 0
    summary = json.loads((output / "summary.json").read_text())
    # The record that model selection and the report read it with writes it back byte for byte.
    assert dumps_json(EvaluationSummary.read(output).to_json()) == (output / "summary.json").read_text()
    assert [t["name"] for t in summary["targets"]] == ["anterior", "posterior"]
    assert summary["tolerance_mm"] == 2.0
    assert len(summary["per_case"]) == len(HIPPOCAMPUS_CASES)
    assert 0.3 < summary["foreground_mean"]["dice"] < 1.0
    with open(output / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * len(HIPPOCAMPUS_CASES)
    first = summary["per_case"][0]
    row = next(r for r in rows if r["case"] == first["case"] and r["target"] == "1")
    assert float(row["dice"]) == pytest.approx(first["metrics"]["1"]["dice"])
    assert float(row["nsd"]) == pytest.approx(first["metrics"]["1"]["nsd"])
    assert "foreground mean" in capsys.readouterr().out


def test_evaluation_draws_its_progress_bars_only_when_asked(hippocampus_folders, capsys):
    predictions, references = hippocampus_folders
    quiet = evaluate_folders(predictions, references, with_surface_metrics=False, progress=False)
    assert capsys.readouterr().err == ""  # `run --no-progress` and `demo --no-progress` evaluate this way
    shown = evaluate_folders(predictions, references, with_surface_metrics=False)
    error = capsys.readouterr().err
    assert "labels" in error and "evaluate" in error
    assert shown.foreground_mean == quiet.foreground_mean


def test_missing_predictions_are_named(hippocampus_folders, tmp_path, capsys):
    predictions, references = hippocampus_folders
    partial = tmp_path / "partial"
    partial.mkdir()
    for case in HIPPOCAMPUS_CASES[:2]:
        (partial / f"{case}.nii.gz").write_bytes((predictions / f"{case}.nii.gz").read_bytes())
    assert main(["evaluate", str(partial), str(references), "--labels", "1", "2"]) == 2
    error = capsys.readouterr().err
    assert HIPPOCAMPUS_CASES[2] in error and HIPPOCAMPUS_CASES[3] in error and "missing" in error
    # The library can evaluate just the predicted cases (cross-validation folds).
    summary = evaluate_folders(partial, references, cases=HIPPOCAMPUS_CASES[:2], with_surface_metrics=False)
    assert len(summary.per_case) == 2
    assert summary.per_case[0].metrics["1"]["hd95_mm"] is None


def test_a_prediction_on_another_grid_is_refused_naming_the_case(hippocampus_folders, tmp_path, capsys):
    predictions, references = hippocampus_folders
    wrong = tmp_path / "wrong"
    for case in HIPPOCAMPUS_CASES:
        image = read_image(predictions / f"{case}.nii.gz")
        if case == HIPPOCAMPUS_CASES[1]:
            geometry = Geometry(
                spacing=image.geometry.spacing, origin=image.geometry.origin, direction=image.geometry.direction,
                shape=(image.geometry.shape[0] - 1, *image.geometry.shape[1:]),
            )
            write_image(image.array[1:], geometry, wrong / f"{case}.nii.gz")
        else:
            write_image(image.array, image.geometry, wrong / f"{case}.nii.gz")
    assert main(["evaluate", str(wrong), str(references), "--labels", "1", "2", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert HIPPOCAMPUS_CASES[1] in error and "shape" in error


def test_regions_and_ignore_label_come_from_dataset_json(tmp_path):
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({
        "labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3},
        "channel_names": {"0": "MRI"}, "numTraining": 1, "file_ending": ".nii.gz",
    }))
    targets, ignore_label = targets_from_dataset_json(dataset_json)
    assert [(t.name, t.values, t.key) for t in targets] == [("whole", (1, 2), "1,2"), ("core", (2,), "2")]
    assert ignore_label == 3
    reference = np.zeros((1, 8, 8), dtype=np.uint8)
    reference[0, 2:6, 2:6] = 1
    reference[0, 3:5, 3:5] = 2
    reference[0, 7, :] = 3
    prediction = reference.copy()
    prediction[0, 7, :] = 1  # predicted inside the ignored row: not an error
    prediction[0, 3:5, 3:5] = 1  # the core was called the outer class: region "whole" still perfect
    geometry = Geometry(
        spacing=(1.0, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(1, 8, 8)
    )
    write_image(reference, geometry, tmp_path / "ref" / "a.nii.gz")
    write_image(prediction, geometry, tmp_path / "pred" / "a.nii.gz")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", targets=targets, ignore_label=ignore_label)
    assert summary.mean["1,2"]["dice"] == 1.0
    assert summary.mean["2"]["dice"] == 0.0
