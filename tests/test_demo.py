"""The built-in demo data: deterministic, valid, and with the properties the pipeline demo relies on."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.data.check import check_dataset
from autoseg.data.demo_data import generate_demo_dataset
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import UserError
from autoseg.io.images import read_image


def _cases(root):
    dataset = load_raw_dataset(root)
    return [(read_image(case.images[0]), read_image(case.label)) for case in dataset.training_cases]


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_generation_is_deterministic_for_a_seed_and_per_case(tmp_path, tree_hashes, kind):
    first = generate_demo_dataset(tmp_path / "a", kind=kind, num_cases=4, seed=3)
    again = generate_demo_dataset(tmp_path / "b", kind=kind, num_cases=4, seed=3)
    assert tree_hashes(first) == tree_hashes(again)
    # Case k does not depend on how many cases were asked for.
    fewer = generate_demo_dataset(tmp_path / "c", kind=kind, num_cases=2, seed=3)
    for (image, label), (image_few, label_few) in zip(_cases(first)[:2], _cases(fewer), strict=True):
        np.testing.assert_array_equal(image.array, image_few.array)
        np.testing.assert_array_equal(label.array, label_few.array)
    other_seed = generate_demo_dataset(tmp_path / "d", kind=kind, num_cases=4, seed=4)
    assert not np.array_equal(_cases(first)[0][0].array, _cases(other_seed)[0][0].array)


def test_3d_demo_is_anisotropic_with_a_large_and_a_small_class(tmp_path):
    root = generate_demo_dataset(tmp_path / "Dataset990_Demo3D", kind="3d", num_cases=6)
    assert check_dataset(root, workers=1, progress=False) == []
    dataset = load_raw_dataset(root)
    assert dataset.foreground_labels == (1, 2) and dataset.channel_names == ("MRI",)
    spacings, shapes = [], []
    for image, label in _cases(root):
        geometry = image.geometry
        assert geometry == label.geometry
        spacings.append(geometry.spacing)
        shapes.append(geometry.shape)
        assert geometry.spacing[0] / geometry.spacing[1] > 3  # thick slices: the anisotropic path is exercised
        assert any(abs(v) > 1 for v in geometry.origin)
        counts = np.bincount(label.array.ravel(), minlength=3)
        assert counts[1] > 0.02 * label.array.size  # the organ is large
        assert 0 < counts[2] < 0.1 * counts[1]  # the lesion is small, but always present
        assert len(np.unique(np.nonzero(label.array == 2)[0])) <= 5  # and spans only a few thick slices
        values = image.array.astype(np.float64)
        assert (values[label.array > 0] > 0).all() and (values == 0).mean() > 0.1  # air outside the body is 0
        organ, lesion = values[label.array == 1], values[label.array == 2]
        assert lesion.mean() < organ.mean() - 2 * organ.std()  # the lesion is visibly darker
        assert organ.std() > 0.03 * organ.mean()  # noise, texture and bias field: not a flat cartoon
    assert len(set(spacings)) > 1 and len(set(shapes)) > 1  # realistic variety between cases
    assert all(20 <= s[0] <= 28 and 56 <= s[1] <= 72 and 56 <= s[2] <= 72 for s in shapes)


def test_2d_demo_is_1xhxw_with_varying_pixel_size(tmp_path):
    root = generate_demo_dataset(tmp_path / "Dataset991_Demo2D", kind="2d", num_cases=5)
    assert check_dataset(root, workers=1, progress=False) == []
    pixel_sizes = set()
    for image, label in _cases(root):
        assert image.geometry.is_2d and image.array.shape == label.array.shape
        assert image.array.dtype == np.uint8
        pixel_sizes.add(image.geometry.spacing[1])
        head = label.array == 1
        assert 0.05 < head.mean() < 0.4
        assert image.array[0, 0, 0] == 0 and image.array[0, 0, -1] == 0  # outside the ultrasound fan
    assert len(pixel_sizes) == 5 and all(0.1 <= s <= 0.3 for s in pixel_sizes)


def test_an_existing_folder_that_is_not_a_demo_is_never_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not empty"):
        generate_demo_dataset(folder, kind="3d", num_cases=1, overwrite=True)
    assert (folder / "data.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="unknown demo kind"):
        generate_demo_dataset(tmp_path / "x", kind="4d")


def test_demo_data_only_generates_and_checks_and_says_what_it_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOSEG_WORK_DIR", str(tmp_path / "from_env"))
    assert main(["demo", "--kind", "both", "--num-cases", "3", "--no-progress", "--workers", "1", "--data-only"]) == 0
    output = capsys.readouterr().out
    assert "Stages run: generate, check." in output
    assert "Skipped (--data-only):" in output and "train" in output
    for name in ("Dataset990_Demo3D", "Dataset991_Demo2D"):
        assert len(load_raw_dataset(tmp_path / "from_env" / "demo_data" / name).training_cases) == 3

    # --work-dir wins over the environment; a second run with the same settings reuses the data.
    work_dir = tmp_path / "chosen"
    data_only = ["demo", "--no-progress", "--workers", "1", "--data-only"]
    assert main([*data_only, "--work-dir", str(work_dir), "--num-cases", "2"]) == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    assert main([*data_only, "--work-dir", str(work_dir), "--num-cases", "2"]) == 0
    assert "reused 2 cases" in capsys.readouterr().out
    assert main([*data_only, "--work-dir", str(work_dir), "--num-cases", "3"]) == 0
    assert "wrote 3 cases" in capsys.readouterr().out
