"""Keep-largest-component post-processing: what it removes, when it is adopted, and that it round-trips as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import UserError
from autoseg.evaluation.metrics import overlap_metrics
from autoseg.evaluation.postprocessing import apply_postprocessing_to_folder, determine_postprocessing
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.utils.components import (
    _largest_component_scipy,
    keep_largest_component,
    keep_largest_of_values,
)

HIPPOCAMPUS_CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_007", "hippocampus_014")
SYNTHETIC_GEOMETRY = Geometry(
    spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(12, 24, 24)
)


def test_keep_largest_component_removes_small_islands_but_keeps_corner_neighbours():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[5, 5, 5] = True  # touches the cube only at a corner: same structure
    mask[8:10, 8:10, 8:10] = True  # 8-voxel island
    kept = keep_largest_component(mask)
    assert kept.sum() == 65
    assert kept[5, 5, 5] and not kept[9, 9, 9]
    assert not keep_largest_component(np.zeros((1, 5, 5), dtype=bool)).any()


def test_cc3d_and_scipy_labelling_keep_the_same_component():
    generator = np.random.default_rng(3)
    for shape in ((1, 60, 70), (20, 30, 25)):
        mask = generator.random(shape) > 0.6
        assert np.array_equal(keep_largest_component(mask), _largest_component_scipy(mask))


def test_foreground_step_keeps_classes_intact_and_class_step_acts_on_one_class():
    label_map = np.zeros((1, 12, 12), dtype=np.uint8)
    label_map[0, 1:6, 1:4] = 1
    label_map[0, 1:6, 4:7] = 2  # touches class 1: one foreground object with two classes
    label_map[0, 9:11, 9:11] = 2  # separate island of class 2
    foreground = keep_largest_of_values(label_map, [1, 2])
    assert (foreground == 1).sum() == 15 and (foreground == 2).sum() == 15
    per_class = PostprocessingDecision(keep_largest_per_class=(2,)).apply(label_map)
    assert (per_class == 2).sum() == 15 and (per_class == 1).sum() == 15
    assert per_class.dtype == label_map.dtype
    assert np.array_equal(PostprocessingDecision().apply(label_map), label_map)


def _write_pairs(folder: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], geometry: Geometry) -> None:
    for case, (prediction, reference) in pairs.items():
        write_image(prediction, geometry, folder / "predictions" / f"{case}.nii.gz")
        write_image(reference, geometry, folder / "references" / f"{case}.nii.gz")


def test_spurious_blobs_on_real_hippocampus_labels_make_the_foreground_step_adopted(tmp_path, hippocampus_root):
    pairs = {}
    for index, case in enumerate(HIPPOCAMPUS_CASES):
        reference = read_image(hippocampus_root / "labelsTr" / f"{case}.nii.gz")
        labels = np.rint(reference.array).astype(np.uint8)
        prediction = labels.copy()
        prediction[index % labels.shape[0], :3, :3] = 1 + index % 2  # false positive far from the hippocampus
        geometry = reference.geometry
        write_image(prediction, geometry, tmp_path / "predictions" / f"{case}.nii.gz")
        write_image(labels, geometry, tmp_path / "references" / f"{case}.nii.gz")
        pairs[case] = (prediction, labels)
    output = tmp_path / "postprocessing.json"
    decision = determine_postprocessing(tmp_path / "predictions", tmp_path / "references", output_file=output)
    assert decision.keep_largest_foreground is True
    evidence = decision.evidence
    assert evidence["foreground_dice_after"] > evidence["foreground_dice_before"]
    # The references are single objects, so the cleaned predictions equal them exactly.
    assert evidence["foreground_dice_after"] == pytest.approx(1.0)
    stored = PostprocessingDecision.read(output)
    assert stored.keep_largest_foreground is True
    for prediction, reference in pairs.values():
        assert np.array_equal(stored.apply(prediction), reference)


def test_a_step_that_would_remove_true_objects_is_not_adopted(tmp_path):
    # Two true objects of class 1 per case: keeping one would lose the other, whatever it gains elsewhere.
    pairs = {}
    for case_index in range(3):
        reference = np.zeros(SYNTHETIC_GEOMETRY.shape, dtype=np.uint8)
        reference[2:6, 2:10, 2:10] = 1
        reference[2:6, 14:22, 14:22] = 1
        prediction = reference.copy()
        prediction[2:4, 2:4, 2 + case_index] = 0  # small errors that no post-processing can fix
        pairs[f"case_{case_index}"] = (prediction, reference)
    _write_pairs(tmp_path, pairs, SYNTHETIC_GEOMETRY)
    decision = determine_postprocessing(tmp_path / "predictions", tmp_path / "references")
    assert decision.keep_largest_foreground is False
    assert decision.keep_largest_per_class == ()


def test_a_class_island_attached_to_another_class_is_removed_by_the_per_class_step(tmp_path):
    pairs = {}
    for case_index in range(3):
        reference = np.zeros(SYNTHETIC_GEOMETRY.shape, dtype=np.uint8)
        reference[3:8, 4:12, 4:12] = 1
        reference[3:8, 12:18, 4:12] = 2
        prediction = reference.copy()
        # A class-2 island touching class 1 on the far side: the foreground stays one object, class 2 does not.
        prediction[4:6, 2:4, 6 + case_index : 9 + case_index] = 2
        pairs[f"case_{case_index}"] = (prediction, reference)
    _write_pairs(tmp_path, pairs, SYNTHETIC_GEOMETRY)
    decision = determine_postprocessing(tmp_path / "predictions", tmp_path / "references", workers=2)
    assert decision.keep_largest_foreground is False
    assert decision.keep_largest_per_class == (2,)
    assert decision.evidence["dice_after"]["2"] == pytest.approx(1.0)
    assert decision.evidence["dice_after"]["1"] == decision.evidence["dice_before"]["1"]
    json.dumps(decision.to_json(), allow_nan=False)  # the decision is plain JSON


def test_postprocessing_a_folder_keeps_the_hc18_geometry(tmp_path, hc18_root):
    reference = read_image(hc18_root / "labelsTr" / "005_HC.nii.gz")
    prediction = (reference.array > 0).astype(np.uint8)
    prediction[0, 5:15, 5:15] = 1
    write_image(prediction, reference.geometry, tmp_path / "raw" / "005_HC.nii.gz")
    written = apply_postprocessing_to_folder(
        tmp_path / "raw", tmp_path / "clean", PostprocessingDecision(keep_largest_foreground=True)
    )
    cleaned = read_image(written[0])
    assert cleaned.geometry == reference.geometry
    assert overlap_metrics(cleaned.array > 0, reference.array > 0)["dice"] == 1.0


def test_a_malformed_decision_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({"keep_largest_foreground": "yes", "keep_largest_per_class": []}))
    with pytest.raises(UserError, match=r"postprocessing\.json"):
        PostprocessingDecision.read(path)
    path.write_text(json.dumps({"keep_largest_foreground": True, "keep_largest_per_class": ["liver"]}))
    with pytest.raises(UserError, match="keep_largest_per_class"):
        PostprocessingDecision.read(path)
