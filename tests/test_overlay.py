"""Overlay PNGs show the right slice, the label colours in the right places, and square pixels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from autoseg.cli import main
from autoseg.evaluation.overlay import PALETTE, png_bytes, render_overlay, save_png, window_to_uint8
from autoseg.io.images import Geometry, read_image, write_image


def _is_grey(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


def test_hc18_overlay_tints_exactly_the_labelled_pixels(hc18_root):
    image = read_image(hc18_root / "imagesTr" / "005_HC_0000.nii.gz")
    label = read_image(hc18_root / "labelsTr" / "005_HC.nii.gz")
    rgb = render_overlay(image.array, label.array, spacing=image.geometry.spacing)
    assert rgb.shape == (*image.array.shape[1:], 3) and rgb.dtype == np.uint8
    head = label.array[0] > 0
    assert _is_grey(rgb[~head]).all()
    assert not _is_grey(rgb[head]).any()
    # The outline is drawn in the class colour itself, on the edge of the head.
    outline = np.all(rgb == np.asarray(PALETTE[0], dtype=np.uint8), axis=-1)
    assert outline.sum() > 100 and head[outline].all()


def test_hippocampus_overlay_shows_the_most_labelled_slice_enlarged_with_both_classes(hippocampus_root):
    image = read_image(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz")
    label = read_image(hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz")
    labels = np.rint(label.array).astype(np.uint8)
    best = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    default = render_overlay(image.array, labels, spacing=image.geometry.spacing)
    explicit = render_overlay(image.array, labels, spacing=image.geometry.spacing, slice_index=best)
    assert np.array_equal(default, explicit)
    assert min(default.shape[:2]) >= 256
    # Whole-number enlargement of a 1 mm isotropic slice keeps its aspect ratio exactly.
    assert default.shape[0] * labels.shape[2] == default.shape[1] * labels.shape[1]
    for value in (1, 2):
        colour = np.asarray(PALETTE[value - 1], dtype=np.uint8)
        assert np.all(default == colour, axis=-1).any(), f"class {value} outline missing"


def test_anisotropic_voxels_are_shown_as_square_pixels_with_z_upwards():
    image = np.zeros((4, 10, 10), dtype=np.float32)
    image[0] = 100.0  # the lowest slice (z = 0) is bright
    label = np.zeros_like(image, dtype=np.uint8)
    rgb = render_overlay(image, label, axis=2, slice_index=5, spacing=(3.0, 1.0, 1.0), minimum_size=10)
    # 4 slices of 3 mm against 10 rows of 1 mm: 12 x 10 square pixels.
    assert rgb.shape[:2] == (12, 10)
    assert rgb[-1, 0, 0] == 255 and rgb[0, 0, 0] == 0  # z = 0 is at the bottom


def test_windowing_clips_outliers_instead_of_darkening_the_image():
    values = np.linspace(0.0, 100.0, 10_000)
    values[0] = 1e7  # one extreme voxel, as in some Hippocampus images
    windowed = window_to_uint8(values)
    assert 120 <= windowed[5000] <= 135
    assert windowed[0] == 255


def test_save_png_writes_lossless_rgb_that_other_readers_decode_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    path = save_png(rgb, tmp_path / "picture.png")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"  # no alpha channel added
        assert np.array_equal(np.asarray(picture), rgb)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), rgb)
    assert png_bytes(rgb) == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]  # written atomically, nothing left over
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(rgb.astype(np.float32))


def test_overlay_command_writes_a_png_and_refuses_mismatched_files(tmp_path, capsys, hippocampus_root):
    image = hippocampus_root / "imagesTr" / "hippocampus_004_0000.nii.gz"
    label = hippocampus_root / "labelsTr" / "hippocampus_004.nii.gz"
    output = tmp_path / "overlay.png"
    assert main(["overlay", str(image), str(label), str(output), "--axis", "1"]) == 0
    written = sitk.ReadImage(str(output))
    assert written.GetNumberOfComponentsPerPixel() == 3 and min(written.GetSize()) >= 256
    assert "slice" in capsys.readouterr().out

    other_label = hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz"
    assert main(["overlay", str(image), str(other_label), str(tmp_path / "bad.png")]) == 2
    assert "hippocampus_001.nii.gz" in capsys.readouterr().err
    assert main(["overlay", str(image), str(label), str(tmp_path / "bad.png"), "--slice", "500"]) == 2
    assert "--slice 500" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_overlay_of_a_2d_label_on_a_png_sized_image(tmp_path):
    geometry = Geometry(spacing=(1.0, 0.2, 0.2), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                        shape=(1, 300, 400))
    image = np.tile(np.arange(400, dtype=np.float32), (1, 300, 1))
    label = np.zeros((1, 300, 400), dtype=np.uint8)
    label[0, 100:200, 150:250] = 3
    write_image(image, geometry, tmp_path / "image.nii.gz")
    write_image(label, geometry, tmp_path / "label.nii.gz")
    assert main(["overlay", str(tmp_path / "image.nii.gz"), str(tmp_path / "label.nii.gz"),
                 str(tmp_path / "out.png"), "--no-outline"]) == 0
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.png")))
    assert rgb.shape == (300, 400, 3)
    assert not _is_grey(rgb[150, 200:201]).any() and _is_grey(rgb[50, :]).all()
