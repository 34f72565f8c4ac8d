"""`autoseg convert-msd` on MSD-style folders built from real Hippocampus files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.data.check import check_dataset
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import DatasetError
from autoseg.io.images import read_image
from autoseg.utils.files import sha256_file

CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_006")
TEST_CASE = "hippocampus_007"


def _volume(hippocampus_root: Path, identifier: str) -> sitk.Image:
    return sitk.ReadImage(str(hippocampus_root / "imagesTr" / f"{identifier}_0000.nii.gz"))


def _second_modality(first: sitk.Image) -> sitk.Image:
    """A different but real-looking channel with the first one's geometry: its intensities inverted."""
    array = sitk.GetArrayFromImage(first).astype(np.float32)
    second = sitk.GetImageFromArray(array.max() - array)
    second.CopyInformation(first)
    return second


def _with_geometry(image: sitk.Image) -> sitk.Image:
    """Give the channel a non-trivial geometry so that a conversion dropping it cannot pass."""
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((12.5, -30.0, 7.25))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def build_msd_task(hippocampus_root: Path, folder: Path, *, modalities: int) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "imagesTs").mkdir()
    training = []
    for identifier in (*CASES, TEST_CASE):
        first = _with_geometry(sitk.Cast(_volume(hippocampus_root, identifier), sitk.sitkFloat32))
        image = first if modalities == 1 else sitk.JoinSeries([first, _second_modality(first)])
        subfolder = "imagesTs" if identifier == TEST_CASE else "imagesTr"
        sitk.WriteImage(image, str(folder / subfolder / f"{identifier}.nii.gz"))
        if identifier != TEST_CASE:
            label = _with_geometry(sitk.ReadImage(str(hippocampus_root / "labelsTr" / f"{identifier}.nii.gz")))
            sitk.WriteImage(label, str(folder / "labelsTr" / f"{identifier}.nii.gz"))
            training.append({"image": f"./imagesTr/{identifier}.nii.gz", "label": f"./labelsTr/{identifier}.nii.gz"})
    # The real MSD archives contain macOS resource-fork files that dataset.json does not list.
    (folder / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    meta = {
        "name": "Hippocampus",
        "tensorImageSize": "4D" if modalities > 1 else "3D",
        "modality": {"0": "MRI", "1": "inverted MRI"} if modalities > 1 else {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training),
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/{TEST_CASE}.nii.gz"],
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("modalities", [2, 1])
def test_conversion_keeps_voxels_geometry_and_labels(hippocampus_root, tmp_path, modalities, capsys):
    source = build_msd_task(hippocampus_root, tmp_path / "Task04_Hippocampus", modalities=modalities)
    destination = tmp_path / "Dataset004_Converted"
    assert main(["convert-msd", str(source), str(destination), "--no-progress", "--workers", "1"]) == 0
    assert "autoseg check" in capsys.readouterr().out

    dataset = load_raw_dataset(destination)
    assert dataset.channel_names == (("MRI", "inverted MRI") if modalities > 1 else ("MRI",))
    assert dataset.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dataset.num_training == 3 and [c.identifier for c in dataset.training_cases] == sorted(CASES)
    assert [c.identifier for c in dataset.test_cases] == [TEST_CASE]

    for case in dataset.training_cases + dataset.test_cases:
        folder = "imagesTs" if case.label is None else "imagesTr"
        original = sitk.ReadImage(str(source / folder / f"{case.identifier}.nii.gz"))
        volumes = sitk.GetArrayFromImage(original).reshape(modalities, *reversed(original.GetSize()[:3]))
        for channel, path in enumerate(case.images):
            converted = read_image(path)
            np.testing.assert_array_equal(converted.array, volumes[channel])
            assert converted.geometry.spacing == pytest.approx((2.5, 1.1, 0.9))
            assert converted.geometry.origin == pytest.approx((12.5, -30.0, 7.25))
            assert converted.geometry.direction == pytest.approx((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        if case.label is not None:
            assert sha256_file(case.label) == sha256_file(source / "labelsTr" / f"{case.identifier}.nii.gz")
            assert read_image(case.label).geometry == read_image(case.images[0]).geometry

    assert check_dataset(destination, workers=1, progress=False) == []
    assert main(["check", str(destination), "--no-progress", "--workers", "1"]) == 0


def test_a_non_empty_destination_is_never_overwritten(hippocampus_root, tmp_path, capsys):
    source = build_msd_task(hippocampus_root, tmp_path / "Task04_Hippocampus", modalities=1)
    destination = tmp_path / "existing"
    destination.mkdir()
    (destination / "notes.txt").write_text("mine")
    assert main(["convert-msd", str(source), str(destination), "--no-progress"]) == 2
    assert "existing: the destination exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in destination.iterdir()] == ["notes.txt"]


def test_modality_count_mismatch_names_the_file_and_leaves_nothing_behind(hippocampus_root, tmp_path):
    from autoseg.data.msd import convert_msd

    source = build_msd_task(hippocampus_root, tmp_path / "Task04_Hippocampus", modalities=2)
    meta = json.loads((source / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI", "1": "T1", "2": "T2"}
    (source / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"hippocampus_001\.nii\.gz: holds 2 volumes but .* declares 3"):
        convert_msd(source, tmp_path / "out", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task04_Hippocampus"]
