"""Fingerprint: crops, intensity statistics and class counts on real NIfTI files; cache reuse and invalidation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.data.raw_folder import load_raw_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.fingerprint.intensity_statistics import sample_foreground, summarise_intensities
from autoseg.records.fingerprint import ClassPresence, Fingerprint, load_fingerprint
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import dumps_json
from autoseg.utils.nonzero_crop import nonzero_bounding_box, nonzero_mask


def _write(array: np.ndarray, path: Path, spacing_zyx: tuple[float, float, float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))


def _make_dataset(root: Path, *, cases: int = 5, channels: tuple[str, ...] = ("MRI", "T2")) -> dict:
    """Cases of 12 x 20 x 24 voxels whose non-zero region is a known box; channel 1 extends it on the x axis."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    generator = np.random.default_rng(7)
    truth = {}
    for index in range(cases):
        identifier = f"case_{index:02d}"
        first = np.zeros((12, 20, 24), np.float32)
        first[2:10, 3:17, 4:15] = generator.uniform(10, 20, (8, 14, 11))
        first[5, 8, 8] = 0.0  # a hole inside the body must not matter
        second = np.zeros_like(first)
        second[2:10, 3:17, 15:20] = 5.0  # only channel 1 covers x in 15..19: the crop must OR the channels
        label = np.zeros(first.shape, np.uint8)
        label[4:8, 6:12, 6:10] = 1
        label[4:6, 6:8, 12:14] = 2
        _write(first, root / "imagesTr" / f"{identifier}_0000.nii.gz", (2.0, 0.5, 0.5 + index * 0.1))
        _write(second, root / "imagesTr" / f"{identifier}_0001.nii.gz", (2.0, 0.5, 0.5 + index * 0.1))
        _write(label, root / "labelsTr" / f"{identifier}.nii.gz", (2.0, 0.5, 0.5 + index * 0.1))
        truth[identifier] = (first, second, label)
    meta = {"channel_names": {str(i): name for i, name in enumerate(channels)},
            "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return truth


def test_crop_fills_holes_and_ors_channels() -> None:
    first = np.zeros((5, 9, 9))
    first[1:4, 2:7, 2:7] = 1
    first[2, 4, 4] = 0  # enclosed hole
    second = np.zeros_like(first)
    second[1:4, 2:7, 7] = 3
    assert nonzero_mask([first])[2, 4, 4]
    assert nonzero_bounding_box([first, second]) == ((1, 4), (2, 7), (2, 8))
    assert nonzero_bounding_box([np.zeros((3, 4, 5))]) == ((0, 3), (0, 4), (0, 5))


def test_sample_is_bounded_and_reproducible() -> None:
    values = np.arange(100_000, dtype=np.float32)
    sample = sample_foreground(values, maximum_samples=1000, seed=3)
    assert sample.size == 1000
    assert np.array_equal(sample, sample_foreground(values, maximum_samples=1000, seed=3))
    assert summarise_intensities(np.array([]))["num_samples"] == 0


def test_fingerprint_matches_the_files(tmp_path: Path) -> None:
    truth = _make_dataset(tmp_path / "Dataset900_Box")
    dataset = load_raw_dataset(tmp_path / "Dataset900_Box")
    fingerprint = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "work", dataset.root), workers=1)

    assert (tmp_path / "work" / "Dataset900_Box" / "fingerprint.json").is_file()
    assert fingerprint.is_2d is False
    case = fingerprint.cases["case_01"]
    assert case.shape == (12, 20, 24)
    assert case.shape_after_crop == (8, 14, 16)
    assert case.relative_size_after_crop == pytest.approx(8 * 14 * 16 / (12 * 20 * 24), abs=1e-6)
    assert case.spacing == pytest.approx((2.0, 0.5, 0.6))
    assert case.class_voxels == {"1": 4 * 6 * 4, "2": 2 * 2 * 2}
    assert fingerprint.classes["2"] == ClassPresence(total_voxels=5 * 8, cases_present=5)
    assert fingerprint.median_spacing == pytest.approx((2.0, 0.5, 0.7))

    # Foreground statistics are those of every labelled voxel (small dataset: nothing is subsampled).
    foreground = np.concatenate([first[label > 0] for first, _, label in truth.values()]).astype(np.float64)
    statistics = fingerprint.foreground_intensities["0"]
    assert statistics.num_samples == foreground.size
    assert statistics.mean == pytest.approx(foreground.mean(), rel=1e-6)
    assert statistics.std == pytest.approx(foreground.std(), rel=1e-5)
    assert statistics.percentile_99_5 == pytest.approx(np.percentile(foreground, 99.5), rel=1e-6)
    # Channel 1 is zero wherever there is a label: its statistics come from the same voxels.
    assert fingerprint.foreground_intensities["1"].num_samples == foreground.size
    assert fingerprint.foreground_intensities["1"].max == 0.0


def test_fingerprint_record_writes_back_the_file_it_read(tmp_path: Path) -> None:
    _make_dataset(tmp_path / "Dataset903_Box", cases=3)
    dataset = load_raw_dataset(tmp_path / "Dataset903_Box")
    work = WorkFolder.for_dataset(tmp_path / "work", dataset.root)
    compute_fingerprint(dataset, work, workers=1)
    assert dumps_json(load_fingerprint(work.fingerprint).to_json()) == work.fingerprint.read_text(encoding="utf-8")
    older = {"cases": {"a": {"shape": [1, 4, 4], "from_elsewhere": True}}, "note": 1}  # an older or edited file
    assert Fingerprint.from_json(older).to_json() == older
    assert Fingerprint.from_json(older).case_signatures is None


def test_parallel_workers_give_the_same_fingerprint(tmp_path: Path) -> None:
    _make_dataset(tmp_path / "Dataset901_Box", cases=6)
    dataset = load_raw_dataset(tmp_path / "Dataset901_Box")
    serial = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "serial", dataset.root), workers=1)
    parallel = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "parallel", dataset.root), workers=2)
    assert serial == parallel


def test_fingerprint_is_reused_until_an_input_changes(tmp_path: Path) -> None:
    _make_dataset(tmp_path / "Dataset902_Box", cases=4)
    dataset = load_raw_dataset(tmp_path / "Dataset902_Box")
    path = tmp_path / "work" / "Dataset902_Box" / "fingerprint.json"
    first = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "work", dataset.root), workers=1)
    written = path.stat().st_mtime_ns
    os.utime(path, ns=(written - 10_000_000_000, written - 10_000_000_000))  # make a rewrite detectable
    untouched = path.stat().st_mtime_ns

    again = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "work", dataset.root), workers=1)
    assert again == first
    assert path.stat().st_mtime_ns == untouched  # reused, not rewritten

    # The user fixes a label: the signature changes and the class counts are recomputed.
    label_path = tmp_path / "Dataset902_Box" / "labelsTr" / "case_00.nii.gz"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    label[label == 2] = 1
    _write(label, label_path, (2.0, 0.5, 0.5))
    recomputed = compute_fingerprint(dataset, WorkFolder.for_dataset(tmp_path / "work", dataset.root), workers=1)
    assert recomputed.inputs_signature != first.inputs_signature
    assert "2" not in recomputed.cases["case_00"].class_voxels
    assert recomputed.classes["2"].cases_present == 3


def test_real_hippocampus_and_hc18(tmp_path: Path, hippocampus_root: Path, hc18_root: Path) -> None:
    hippocampus = compute_fingerprint(
        load_raw_dataset(hippocampus_root), WorkFolder.for_dataset(tmp_path, hippocampus_root), workers=2
    )
    assert hippocampus.num_cases == 200 and hippocampus.is_2d is False
    assert hippocampus.median_spacing == (1.0, 1.0, 1.0)
    assert hippocampus.median_shape_after_crop == pytest.approx((35.5, 51.0, 35.0), abs=1)
    # Two label files are float32: their values are still counted as classes 1 and 2.
    assert {c.cases_present for c in hippocampus.classes.values()} == {200}
    assert hippocampus.foreground_intensities["0"].max > 1e5  # the mixed intensity ranges are real

    hc18 = compute_fingerprint(load_raw_dataset(hc18_root), WorkFolder.for_dataset(tmp_path, hc18_root), workers=2)
    assert hc18.is_2d is True
    in_plane = np.array([case.spacing[1:] for case in hc18.cases.values()])
    assert 0.04 < in_plane.min() < 0.07 and 0.3 < in_plane.max() < 0.35  # the real per-image pixel sizes
    assert hc18.foreground_intensities["0"].num_samples <= 10_000_000
