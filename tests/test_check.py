"""`autoseg check`: real datasets pass; copies of real cases broken in each way are refused, naming the case."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.data.check import check_dataset, require_valid_dataset
from autoseg.errors import DatasetError
from autoseg.io.images import read_image, write_image

BROKEN_CASE = "hippocampus_004"


def run_check(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["check", str(root), "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_real_hippocampus_passes_and_is_left_untouched(hippocampus_root, tree_hashes, capsys):
    before = tree_hashes(hippocampus_root)
    code, output = run_check(hippocampus_root, capsys)
    assert code == 0, output
    assert "checked 200 training and 0 test case(s): 0 error(s), 0 warning(s)" in output
    assert tree_hashes(hippocampus_root) == before


def test_real_hc18_passes_with_its_2d_images_and_varying_spacing(hc18_root, tree_hashes, capsys):
    before = tree_hashes(hc18_root, every=25)
    code, output = run_check(hc18_root, capsys, "--workers", "2")
    assert code == 0, output
    assert "checked 300 training and 0 test case(s): 0 error(s)" in output
    assert tree_hashes(hc18_root, every=25) == before


def test_float_label_files_holding_integers_are_accepted(hippocampus_root):
    float_label = hippocampus_root / "labelsTr" / "hippocampus_243.nii.gz"
    assert read_image(float_label).array.dtype == np.float32  # the real file this test is about
    assert check_dataset(hippocampus_root, workers=1, progress=False) == []


def _label_path(root: Path) -> Path:
    return root / "labelsTr" / f"{BROKEN_CASE}.nii.gz"


def _image_path(root: Path, channel: int = 0) -> Path:
    return root / "imagesTr" / f"{BROKEN_CASE}_{channel:04d}.nii.gz"


def _rewrite_label(root: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    label = read_image(_label_path(root))
    write_image(change(label.array.copy()), label.geometry, _label_path(root))


def _rewrite_image_with_sitk(root: Path, change: Callable[[sitk.Image], sitk.Image]) -> None:
    image = sitk.ReadImage(str(_image_path(root)))
    sitk.WriteImage(change(image), str(_image_path(root)))


def _edit_json(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def _delete_image(root: Path) -> None:
    _image_path(root).unlink()


def _delete_label(root: Path) -> None:
    _label_path(root).unlink()


def _extra_channel(root: Path) -> None:
    _image_path(root, 1).write_bytes(_image_path(root).read_bytes())


def _shape_mismatch(root: Path) -> None:
    label = read_image(_label_path(root))
    cropped = label.array[:, :-2]
    geometry = type(label.geometry)(**{**label.geometry.__dict__, "shape": cropped.shape})
    write_image(cropped, geometry, _label_path(root))


def _spacing_mismatch(root: Path) -> None:
    label = read_image(_label_path(root))
    geometry = type(label.geometry)(**{**label.geometry.__dict__, "spacing": (1.0, 1.0, 1.5)})
    write_image(label.array, geometry, _label_path(root))


def _undeclared_label_value(root: Path) -> None:
    def add_five(array: np.ndarray) -> np.ndarray:
        array[0, 0, 0] = 5
        return array

    _rewrite_label(root, add_five)


def _fractional_label_value(root: Path) -> None:
    def add_half(array: np.ndarray) -> np.ndarray:
        array = array.astype(np.float32)
        array[0, 0, 0] = 0.5
        return array

    _rewrite_label(root, add_half)


def _non_consecutive_labels(root: Path) -> None:
    _edit_json(root, lambda meta: meta["labels"].update({"posterior": 3}))


def _nan_intensity(root: Path) -> None:
    def with_nan(image: sitk.Image) -> sitk.Image:
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array[1, 2, 3] = np.nan
        result = sitk.GetImageFromArray(array)
        result.CopyInformation(image)
        return result

    _rewrite_image_with_sitk(root, with_nan)


def _truncated_file(root: Path) -> None:
    data = _image_path(root).read_bytes()
    _image_path(root).write_bytes(data[: len(data) * 2 // 3])


def _unreadable_file(root: Path) -> None:
    _image_path(root).write_bytes(b"this is not an image" * 50)


def _wrong_num_training(root: Path) -> None:
    _edit_json(root, lambda meta: meta.update({"numTraining": 7}))


def _unknown_file_ending(root: Path) -> None:
    (root / "imagesTr" / f"{BROKEN_CASE}_0000.txt").write_text("notes")


def _four_dimensional_image(root: Path) -> None:
    def to_4d(image: sitk.Image) -> sitk.Image:
        return sitk.JoinSeries([image, image])

    _rewrite_image_with_sitk(root, to_4d)


# (breakage, fragment the error line must contain, whether the line names the case)
BREAKAGES = [
    (_delete_image, "label file has no matching image", True),
    (_delete_label, "label file is missing", True),
    (_extra_channel, "extra channel 0001", True),
    (_shape_mismatch, "shape [38, 50, 36] differs from [38, 52, 36]", True),
    (_spacing_mismatch, "spacing [1.0, 1.0, 1.5] differs", True),
    (_undeclared_label_value, "label values 5 are not declared", True),
    (_fractional_label_value, "label values must be integers, found 0.5", True),
    (_non_consecutive_labels, "label values must be consecutive integers from 0, got [0, 1, 3]", False),
    (_nan_intensity, "image contains 1 NaN or Inf voxel(s)", True),
    (_truncated_file, "truncated", True),
    (_unreadable_file, "cannot be read", True),
    (_wrong_num_training, "numTraining is 7 but 3 training cases were found", False),
    (_unknown_file_ending, "unknown file ending", False),
    (_four_dimensional_image, "is 4D", True),
]


@pytest.mark.parametrize(("breakage", "fragment", "names_case"), BREAKAGES, ids=[b[0].__name__[1:] for b in BREAKAGES])
def test_broken_copy_is_refused_with_a_line_naming_the_problem(
    hippocampus_root, copy_cases, tree_hashes, capsys, breakage, fragment, names_case
):
    root = copy_cases(hippocampus_root, 3)
    assert BROKEN_CASE in {p.name[: -len(".nii.gz")] for p in (root / "labelsTr").iterdir()}
    breakage(root)
    before = tree_hashes(root)
    code, output = run_check(root, capsys, "--workers", "1")
    assert code == 2, output
    error_lines = [line for line in output.splitlines() if line.startswith("ERROR") and fragment in line]
    assert error_lines, output
    if names_case:
        assert f"case {BROKEN_CASE}" in error_lines[0] and BROKEN_CASE in error_lines[0].split(", ", 1)[1]
    else:
        assert str(root) in error_lines[0]
    assert output.strip().splitlines()[-1].startswith("FAILED")
    assert tree_hashes(root) == before


def test_every_problem_is_reported_at_once_using_the_process_pool(hippocampus_root, copy_cases, capsys):
    root = copy_cases(hippocampus_root, 4)
    _nan_intensity(root)
    _undeclared_label_value(root)
    (root / "labelsTr" / "hippocampus_001.nii.gz").write_bytes(b"garbage")
    code, output = run_check(root, capsys, "--workers", "2")
    assert code == 2
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 3, output
    assert "3 error(s)" in output.splitlines()[-1]


def test_origin_and_direction_mismatch_are_warnings_that_do_not_fail(hippocampus_root, copy_cases, capsys):
    root = copy_cases(hippocampus_root, 2)
    label = read_image(_label_path(root))
    moved = type(label.geometry)(
        **{**label.geometry.__dict__, "origin": (5.0, 0.0, 0.0), "direction": (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)}
    )
    write_image(label.array, moved, _label_path(root))
    code, output = run_check(root, capsys, "--workers", "1")
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2 and all(BROKEN_CASE in line for line in warnings)
    assert "0 error(s), 2 warning(s)" in output


def test_require_valid_dataset_returns_the_dataset_or_raises_listing_problems(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 3)
    dataset = require_valid_dataset(root, workers=1, progress=False)
    assert len(dataset.training_cases) == 3
    _truncated_file(root)
    with pytest.raises(DatasetError, match=rf"1 problem\(s\)(.|\n)*{BROKEN_CASE}(.|\n)*truncated"):
        require_valid_dataset(root, workers=1, progress=False)


def test_mixing_2d_and_3d_cases_is_an_error(hippocampus_root, hc18_root, copy_cases, capsys):
    root = copy_cases(hippocampus_root, 2)
    hc18_image = hc18_root / "imagesTr" / "002_HC_0000.nii.gz"
    hc18_label = hc18_root / "labelsTr" / "002_HC.nii.gz"
    (root / "imagesTr" / "002_HC_0000.nii.gz").write_bytes(hc18_image.read_bytes())
    (root / "labelsTr" / "002_HC.nii.gz").write_bytes(hc18_label.read_bytes())
    _edit_json(root, lambda meta: meta.update({"numTraining": 3}))
    code, output = run_check(root, capsys, "--workers", "1")
    assert code == 2
    assert "mixes 2D (1xHxW) and 3D training cases; 2D cases: 002_HC" in output


def test_test_images_are_checked_too(hippocampus_root, copy_cases, capsys):
    root = copy_cases(hippocampus_root, 2)
    (root / "imagesTs").mkdir()
    data = (hippocampus_root / "imagesTr" / "hippocampus_007_0000.nii.gz").read_bytes()
    (root / "imagesTs" / "hippocampus_007_0000.nii.gz").write_bytes(data[: len(data) // 2])
    code, output = run_check(root, capsys, "--workers", "1")
    assert code == 2
    assert "ERROR: case hippocampus_007" in output and "imagesTs" in output and "truncated" in output
    assert "checked 2 training and 1 test case(s)" in output


def test_a_missing_dataset_folder_is_one_clear_error(tmp_path, capsys):
    code, output = run_check(tmp_path / "nowhere", capsys)
    assert code == 2
    assert "nowhere: dataset folder does not exist" in output
