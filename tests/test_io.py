"""Image IO on real files: every format round-trips voxels and geometry exactly; bad files fail naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import ImageReadError
from autoseg.io.images import (
    NATURAL_2D_SLICE_SPACING,
    Geometry,
    count_non_finite_nifti_voxels,
    read_image,
    read_image_header,
    write_image,
)

MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")


def real_files(hippocampus_root: Path, hc18_root: Path) -> dict[str, Path]:
    return {
        "hippocampus image (uint8)": hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz",
        "hippocampus image (float32)": hippocampus_root / "imagesTr" / "hippocampus_243_0000.nii.gz",
        "hippocampus label": hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz",
        "hippocampus float label": hippocampus_root / "labelsTr" / "hippocampus_243.nii.gz",
        "hc18 image": hc18_root / "imagesTr" / "002_HC_0000.nii.gz",
        "hc18 label": hc18_root / "labelsTr" / "002_HC.nii.gz",
    }


@pytest.mark.parametrize("ending", MEDICAL_ENDINGS)
def test_real_files_round_trip_exactly_through_every_medical_format(hippocampus_root, hc18_root, tmp_path, ending):
    for description, source in real_files(hippocampus_root, hc18_root).items():
        original = read_image(source)
        target = tmp_path / f"{source.name.split('.')[0]}{ending}"
        write_image(original.array, original.geometry, target)
        copy = read_image(target)
        assert copy.geometry == original.geometry, description
        assert copy.array.dtype == original.array.dtype, description
        np.testing.assert_array_equal(copy.array, original.array, err_msg=description)
        assert read_image_header(target) == copy.geometry, description
    # Only the final files are left: no temporary partial files, and detached headers name the final data file.
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    if ending in (".nhdr", ".mhd"):
        header = (tmp_path / f"002_HC_0000{ending}").read_text(errors="replace")
        assert "partial" not in header


def test_real_geometry_is_in_numpy_axis_order(hippocampus_root, hc18_root):
    hippocampus = read_image(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz")
    sitk_image = sitk.ReadImage(str(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz"))
    assert hippocampus.geometry.shape == tuple(reversed(sitk_image.GetSize())) == hippocampus.array.shape
    assert hippocampus.geometry.spacing == tuple(reversed(sitk_image.GetSpacing()))
    assert hippocampus.geometry.origin == sitk_image.GetOrigin()
    assert not hippocampus.geometry.is_2d

    # HC18 stores 2D ultrasound as 1xHxW NIfTI: a 2D case, but written back as the 3D file it came from.
    ultrasound = read_image(hc18_root / "imagesTr" / "002_HC_0000.nii.gz")
    assert ultrasound.array.shape == (1, 540, 800)
    assert ultrasound.geometry.is_2d and not ultrasound.geometry.is_2d_file
    assert ultrasound.geometry.spacing[1:] == pytest.approx((0.0620325617, 0.0620325617))


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif", ".tiff"])
def test_2d_natural_images_round_trip_voxels_as_1xhxw(hc18_root, tmp_path, ending):
    ultrasound = read_image(hc18_root / "imagesTr" / "002_HC_0000.nii.gz")
    label = read_image(hc18_root / "labelsTr" / "002_HC.nii.gz")
    for name, source in (("image", ultrasound), ("label", label)):
        target = tmp_path / f"{name}{ending}"
        write_image(source.array, source.geometry, target)
        copy = read_image(target)
        np.testing.assert_array_equal(copy.array, source.array)
        assert copy.geometry.shape == (1, 540, 800) and copy.geometry.is_2d_file and copy.geometry.is_2d
        assert copy.geometry.spacing[0] == NATURAL_2D_SLICE_SPACING
        assert read_image_header(target) == copy.geometry
        # A prediction written back in the 2D file's geometry keeps that geometry (TIFF stores the pixel size
        # as a float32 resolution, so it may move in the 7th digit).
        write_image(copy.array > 0, copy.geometry, tmp_path / f"mask{ending}")
        mask = read_image(tmp_path / f"mask{ending}").geometry
        assert (mask.shape, mask.origin, mask.direction) == (copy.geometry.shape, copy.geometry.origin,
                                                              copy.geometry.direction)
        assert mask.spacing == pytest.approx(copy.geometry.spacing, rel=1e-6)
    if ending != ".bmp":  # BMP has no pixel size; PNG and TIFF keep it (PNG to 6 decimals)
        assert read_image(tmp_path / f"image{ending}").geometry.spacing[1] == pytest.approx(0.0620325617, abs=1e-6)


def test_grey_image_saved_as_rgb_reads_as_one_channel_and_colour_is_refused(hc18_root, tmp_path):
    grey = read_image(hc18_root / "imagesTr" / "002_HC_0000.nii.gz").array[0]
    rgb = np.stack([grey, grey, grey], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "grey_as_rgb.png"))
    np.testing.assert_array_equal(read_image(tmp_path / "grey_as_rgb.png").array[0], grey)

    rgb[..., 1] = 255 - grey
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "colour.png"))
    with pytest.raises(ImageReadError, match=r"colour\.png: is a colour image"):
        read_image(tmp_path / "colour.png")


def test_truncated_nifti_is_refused_instead_of_read_as_garbage(hippocampus_root, hc18_root, tmp_path):
    for source in real_files(hippocampus_root, hc18_root).values():
        data = source.read_bytes()
        truncated = tmp_path / source.name
        truncated.write_bytes(data[: int(len(data) * 0.9)])
        with pytest.raises(ImageReadError, match=rf"{truncated.name}: is truncated"):
            read_image(truncated)
        # Uncompressed NIfTI: ITK would also silently zero-fill the missing voxels.
        original = read_image(source)
        whole = tmp_path / "whole.nii"
        write_image(original.array, original.geometry, whole)
        raw = whole.read_bytes()
        (tmp_path / "cut.nii").write_bytes(raw[: len(raw) - 100])
        with pytest.raises(ImageReadError, match=r"cut\.nii: is truncated"):
            read_image(tmp_path / "cut.nii")


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".png"])
def test_truncated_files_of_other_formats_are_refused(hippocampus_root, hc18_root, tmp_path, ending):
    source = hc18_root / "imagesTr" / "002_HC_0000.nii.gz" if ending == ".png" else (
        hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz")
    image = read_image(source)
    geometry = image.geometry
    if ending == ".png":
        geometry = Geometry(geometry.spacing, geometry.origin, geometry.direction, geometry.shape, is_2d_file=True)
    write_image(image.array, geometry, tmp_path / f"whole{ending}")
    data = (tmp_path / f"whole{ending}").read_bytes()
    (tmp_path / f"cut{ending}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=rf"cut{ending}"):
        read_image(tmp_path / f"cut{ending}")


def test_unreadable_missing_and_unsupported_files_raise_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage_0000.nii.gz"
    garbage.write_bytes(b"not an image at all" * 20)
    with pytest.raises(ImageReadError, match=r"garbage_0000\.nii\.gz: cannot be read"):
        read_image(garbage)
    with pytest.raises(ImageReadError, match=r"garbage_0000\.nii\.gz: cannot be read"):
        read_image_header(garbage)
    with pytest.raises(ImageReadError, match=r"absent\.nii\.gz: file not found"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "scan.dcm").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"scan\.dcm: unsupported file ending"):
        read_image(tmp_path / "scan.dcm")


def test_4d_file_is_refused_naming_the_file(hippocampus_root, tmp_path):
    volume = sitk.ReadImage(str(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(tmp_path / "four_d.nii.gz"))
    with pytest.raises(ImageReadError, match=r"four_d\.nii\.gz: is 4D"):
        read_image(tmp_path / "four_d.nii.gz")


def test_nan_voxels_hidden_by_the_nifti_reader_are_counted_from_the_stored_bytes(hippocampus_root, tmp_path):
    image = read_image(hippocampus_root / "imagesTr" / "hippocampus_243_0000.nii.gz")
    array = image.array.astype(np.float32)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    write_image(array, image.geometry, tmp_path / "nan.nii.gz")
    assert np.isfinite(read_image(tmp_path / "nan.nii.gz").array).all()  # ITK replaces them by 0
    assert count_non_finite_nifti_voxels(tmp_path / "nan.nii.gz") == 3
    assert count_non_finite_nifti_voxels(hippocampus_root / "imagesTr" / "hippocampus_243_0000.nii.gz") == 0


def test_write_refuses_an_array_that_does_not_match_the_geometry(hippocampus_root, tmp_path):
    image = read_image(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz")
    with pytest.raises(ValueError, match="does not match geometry shape"):
        write_image(image.array[:-1], image.geometry, tmp_path / "bad.nii.gz")
    assert not list(tmp_path.iterdir())
