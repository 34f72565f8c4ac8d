"""The CT-like phantom of benchmarks/ct_phantom.py, made tiny (64x64 x 10 slices): geometry, labels, HU ranges, and
`autoseg check` accepts it; the stage timing of benchmarks/ct_scale.py."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/, imported as the scripts import each other (their folder on the path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = benchmark_module("ct_phantom")
    root = tmp_path_factory.mktemp("ct") / "Dataset990_TinyCT"
    return phantom.generate(root, cases=2, seed=3, test_slices=300, in_plane=64, slices=(10, 10), verbose=False)


def read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def test_layout_and_dataset_json(tiny_phantom: Path) -> None:
    description = json.loads((tiny_phantom / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "CT"}
    assert description["labels"] == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "lesion": 4}
    assert description["numTraining"] == 2 and description["file_ending"] == ".nii.gz"
    assert sorted(path.name for path in (tiny_phantom / "imagesTr").iterdir()) == ["ct_000_0000.nii.gz",
                                                                                  "ct_001_0000.nii.gz"]
    assert sorted(path.name for path in (tiny_phantom / "labelsTr").iterdir()) == ["ct_000.nii.gz", "ct_001.nii.gz"]
    assert [path.name for path in (tiny_phantom / "imagesTs").iterdir()] == ["ct_002_0000.nii.gz"]
    assert [path.name for path in (tiny_phantom / "labelsTs").iterdir()] == ["ct_002.nii.gz"]
    assert not list(tiny_phantom.parent.glob(".*partial"))


@pytest.mark.parametrize("case", ["imagesTr/ct_000", "imagesTr/ct_001", "imagesTs/ct_002"])
def test_geometry_labels_and_hounsfield_units(tiny_phantom: Path, case: str) -> None:
    folder, name = case.split("/")
    image, hu = read(tiny_phantom / folder / f"{name}_0000.nii.gz")
    label_image, label = read(tiny_phantom / folder.replace("images", "labels") / f"{name}.nii.gz")
    assert image.GetSize() == label_image.GetSize() == (64, 64, 10)
    assert hu.dtype == np.int16 and label.dtype == np.uint8
    spacing = np.array(image.GetSpacing())
    assert np.allclose(spacing, label_image.GetSpacing()) and np.allclose(image.GetOrigin(), label_image.GetOrigin())
    assert spacing[0] == spacing[1] and 0.65 * 8 <= spacing[0] <= 0.95 * 8  # 512 voxels' field of view in 64
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4} and 1 in label
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert abs(np.median(hu[:, 0, :]) + 1000) < 60  # air at the field of view's edge
    assert 30 <= np.median(hu[label == 1]) <= 80  # liver
    assert hu.max() >= 400  # bone
    assert ((hu > -150) & (hu < -50)).mean() > 0.01  # a fat layer


def test_the_same_seed_gives_the_same_phantom(tiny_phantom: Path, tmp_path: Path) -> None:
    phantom = benchmark_module("ct_phantom")
    again = phantom.generate(tmp_path / "again", cases=1, seed=3, test_slices=0, in_plane=64, slices=(10, 10),
                             verbose=False)
    for path in ("imagesTr/ct_000_0000.nii.gz", "labelsTr/ct_000.nii.gz"):
        assert np.array_equal(read(again / path)[1], read(tiny_phantom / path)[1])


def test_autoseg_check_accepts_it(tiny_phantom: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(tiny_phantom), "--no-progress"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "0 error(s), 0 warning(s)" in output


def test_stage_durations_run_from_marker_to_marker() -> None:
    ct_scale = benchmark_module("ct_scale")
    lines = [(0.5, "starting"), (1.0, ""), (1.0, "== check + fingerprint + plan =="), (4.0, "plans"),
             (5.0, "== preprocess =="), (9.5, "== train 3d_fullres fold 0 (fold 1/1) ==")]
    assert ct_scale.stage_durations(lines, 20.0) == {
        "start": 1.0, "check + fingerprint + plan": 4.0, "preprocess": 4.5, "train 3d_fullres fold 0 (fold 1/1)": 10.5,
    }


def test_validation_seconds_run_from_training_finished_to_validation_cases() -> None:
    ct_scale = benchmark_module("ct_scale")
    lines = [(233.7, "training finished after 5 epochs, 146 s"), (240.0, "saving"),
             (486.2, "validation cases (predict_validation): mean Dice 0.0000"), (500.0, "validation cases again")]
    assert ct_scale.validation_seconds(lines) == [252.5]
