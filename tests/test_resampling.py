"""Resampling keeps geometry, label volumes and small structures, and matches scipy's spline interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk

from autoseg.io.images import read_image
from autoseg.records.plans import Configuration
from autoseg.transforms import export as export_module
from autoseg.transforms.case import preprocess_case
from autoseg.transforms.export import (
    export_prediction,
    probabilities_to_label_map,
    probabilities_to_original_geometry,
)
from autoseg.transforms.resampling import resample_channels, resample_segmentation, resampled_shape, separate_axis


def configuration(spacing, *, dimension=3, anisotropic=False):
    """Only what resampling reads (identity axis order); the network and patch are irrelevant here."""
    return Configuration(
        name="test", dimension=dimension, spacing=tuple(spacing), patch_size=(8,) * dimension, batch_size=1,
        network={}, normalization=({"scheme": "zscore", "use_mask": False},),
        resampling={"anisotropic": anisotropic, "image_order": 3, "label_order": 1, "coarse_axis_order": 0},
    )


def write_nifti(array, path, *, spacing_zyx, origin=(10.0, -20.0, 5.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def ellipsoid_case(tmp_path, *, shape=(24, 60, 50), spacing=(2.0, 0.7, 0.9)):
    """Image with a smooth blob; labels: a big ellipsoid (1), a small sphere (2) and a single voxel (3)."""
    z, y, x = np.meshgrid(*[np.arange(size) * step for size, step in zip(shape, spacing, strict=True)], indexing="ij")
    centre = [size * step / 2 for size, step in zip(shape, spacing, strict=True)]
    radius = ((z - centre[0]) / 14) ** 2 + ((y - centre[1]) / 12) ** 2 + ((x - centre[2]) / 13) ** 2
    label = np.zeros(shape, dtype=np.uint8)
    label[radius <= 1] = 1
    label[((z - 30) ** 2 + (y - 8) ** 2 + (x - 8) ** 2) <= 3.5**2] = 2
    label[3, 50, 40] = 3
    image = (100 + 50 * np.exp(-radius) + 5 * np.sin(x / 3)).astype(np.float32)
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # a non-trivial orientation must survive too
    image_path = write_nifti(image, tmp_path / "case_0000.nii.gz", spacing_zyx=spacing, direction=direction)
    label_path = write_nifti(label, tmp_path / "case.nii.gz", spacing_zyx=spacing, direction=direction)
    return image_path, label_path, label


@pytest.mark.parametrize("order", [0, 1, 3])
def test_separable_resampling_equals_scipy_map_coordinates(order):
    generator = np.random.default_rng(order)
    volume = generator.normal(size=(9, 23, 17)).astype(np.float32)
    new_shape = (14, 11, 30)
    positions = [(np.arange(new) + 0.5) * (old / new) - 0.5 for old, new in zip(volume.shape, new_shape, strict=True)]
    reference = scipy.ndimage.map_coordinates(
        volume.astype(np.float64), np.meshgrid(*positions, indexing="ij"), order=order, mode="nearest"
    )
    result = resample_channels(volume[None], new_shape, axis_orders=(order, order, order))[0]
    # Cubic overshoot beyond the input's range is clipped (as skimage's resize, which nnU-Net uses, does).
    np.testing.assert_allclose(result, np.clip(reference, volume.min(), volume.max()), atol=1e-5)
    unclipped = resample_channels(volume[None], new_shape, axis_orders=(order,) * 3, clip_to_input_range=False)[0]
    np.testing.assert_allclose(unclipped, reference, atol=1e-5)


def test_there_and_back_keeps_shape_extent_geometry_and_label_volumes(tmp_path):
    image_path, label_path, label = ellipsoid_case(tmp_path)
    original = read_image(label_path)
    target = configuration([1.3, 1.1, 1.2])
    data, segmentation, properties = preprocess_case([image_path], label_path, configuration=target)
    # The physical extent (size x spacing) is kept to within one new voxel per axis.
    for old_size, old_spacing, new_size, new_spacing in zip(
        properties["shape_after_crop"], properties["spacing_after_crop"],
        properties["shape_after_resampling"], properties["spacing_after_resampling"], strict=True,
    ):
        assert abs(old_size * old_spacing - new_size * new_spacing) <= new_spacing / 2 + 1e-6
    assert data.shape[1:] == segmentation.shape[1:] == tuple(properties["shape_after_resampling"])
    # Physical label volumes (mm^3) survive the change of grid.
    new_voxel = float(np.prod(properties["spacing_after_resampling"]))
    old_voxel = float(np.prod(original.geometry.spacing))
    assert (segmentation == 1).sum() * new_voxel == pytest.approx((label == 1).sum() * old_voxel, rel=0.03)
    assert (segmentation == 2).sum() * new_voxel == pytest.approx((label == 2).sum() * old_voxel, rel=0.15)

    one_hot = np.stack([segmentation[0] == value for value in range(4)]).astype(np.float32)
    output = tmp_path / "back.nii.gz"
    export_prediction(one_hot, properties, configuration=target, output_path=output)
    back = read_image(output)
    assert back.geometry == original.geometry  # shape, spacing, origin, direction: exact
    assert set(np.unique(back.array)) <= {0, 1, 2, 3}
    dice = 2 * ((back.array == 1) & (label == 1)).sum() / ((back.array == 1).sum() + (label == 1).sum())
    assert dice > 0.97
    assert (back.array == 1).sum() == pytest.approx((label == 1).sum(), rel=0.03)
    assert (back.array == 3).any(), "the single-voxel structure must survive the round trip"


def test_labels_never_gain_values_and_small_structures_survive():
    generator = np.random.default_rng(0)
    label = generator.choice(np.array([0, 3, 7, 9], dtype=np.int8), size=(20, 31, 27), p=[0.7, 0.2, 0.09, 0.01])
    label[label == 9] = 0
    label[4, 5, 6] = 9  # one voxel: smaller than a voxel of the coarse grid below
    for new_shape in [(7, 10, 9), (41, 50, 60), (20, 13, 70)]:
        result = resample_segmentation(label, new_shape, axis_orders=(1, 1, 1))
        assert result.shape == new_shape
        assert set(np.unique(result)) == {0, 3, 7, 9}
        assert result.dtype == label.dtype


def test_probabilities_stay_probabilities_and_a_two_dimensional_plan_keeps_slices():
    generator = np.random.default_rng(1)
    logits = generator.normal(size=(3, 4, 20, 30)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    properties = {
        "shape_before_crop": [4, 40, 50], "crop_bbox": [[0, 4], [5, 37], [0, 45]], "shape_after_crop": [4, 32, 45],
        "spacing_after_resampling": [3.0, 1.6, 1.5], "spacing_after_crop": [3.0, 1.0, 1.0],
    }
    full = probabilities_to_original_geometry(
        probabilities, properties, configuration=configuration([3.0, 1.6, 1.5], dimension=2)
    )
    assert full.shape == (3, 4, 40, 50)
    assert full.min() >= 0 and full.max() <= 1 + 1e-6
    np.testing.assert_allclose(full.sum(axis=0), 1, atol=1e-5)
    assert (full[0, :, :5] == 1).all() and (full[1:, :, :5] == 0).all()  # outside the crop box: background


def test_anisotropic_configuration_uses_nearest_neighbour_across_slices():
    # Thick slices (5 mm) with constant, distinct values: nearest along z copies slices, never blends them.
    volume = np.repeat(np.arange(1, 7, dtype=np.float32)[:, None, None] * 100, 16, axis=1).repeat(16, axis=2)
    new_shape = resampled_shape(volume.shape, (5.0, 0.8, 0.8), (2.5, 1.0, 1.0))
    result = resample_channels(volume[None], new_shape, axis_orders=(0, 3, 3))[0]
    assert result.shape == (12, 13, 13)
    np.testing.assert_allclose(np.unique(np.round(result, 3)), np.arange(1, 7) * 100, atol=1e-3)
    with pytest.raises(ValueError, match="not resampled"):
        resample_channels(volume[None], (7, 16, 16), axis_orders=(None, 3, 3))


@pytest.mark.parametrize(
    ("from_spacing", "to_spacing", "axis"),
    [
        ((5.0, 0.8, 0.8), (2.5, 1.0, 1.0), 0),  # the case's thick slices
        ((0.8, 0.8, 5.0), (1.0, 1.0, 1.0), 2),  # ... along the case's own coarsest axis, wherever it is
        ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0),  # an isotropic case going to an anisotropic target
        ((5.0, 0.8, 0.8), (0.8, 0.8, 4.0), 0),  # both anisotropic: the spacing it leaves decides
        ((2.5, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # 2.5x is not more than 3x
        ((1.25, 1.25, 0.24), (1.25, 1.25, 0.24), None),  # two axes share the largest spacing: no single thick axis
    ],
)
def test_the_separately_resampled_axis_is_decided_per_case_as_the_reference_does(from_spacing, to_spacing, axis):
    # nnU-Net v2's determine_do_sep_z_and_axis(force_separate_z=None, ...) gives the same axes for these spacings.
    assert separate_axis(from_spacing, to_spacing) == axis


@pytest.mark.parametrize("plan_says_anisotropic", [True, False])
def test_anisotropic_case_copies_thick_slices_instead_of_blending_them(tmp_path, plan_says_anisotropic):
    # Also in a plan whose median case is isotropic (a dataset mixing thin- and thick-slice scans): the decision
    # is this case's.
    slice_values = np.array([10, 40, 20, 70, 30, 60], dtype=np.float32)
    image = np.repeat(slice_values[:, None, None], 20, axis=1).repeat(20, axis=2)
    label = np.zeros((6, 20, 20), dtype=np.uint8)
    label[2:4, 5:15, 5:15] = 1
    write_nifti(image, tmp_path / "thick_0000.nii.gz", spacing_zyx=(5.0, 0.8, 0.8))
    write_nifti(label, tmp_path / "thick.nii.gz", spacing_zyx=(5.0, 0.8, 0.8))
    plan = configuration([2.5, 1.0, 1.0], anisotropic=plan_says_anisotropic)
    data, segmentation, properties = preprocess_case(
        [tmp_path / "thick_0000.nii.gz"], tmp_path / "thick.nii.gz", configuration=plan,
    )
    assert properties["shape_after_resampling"] == [12, 16, 16]
    per_slice = data[0].reshape(12, -1)
    assert np.allclose(per_slice, per_slice[:, :1], atol=1e-4)  # in-plane cubic keeps a constant slice constant
    normalised = (slice_values - image.mean()) / image.std()
    np.testing.assert_allclose(per_slice[:, 0], np.repeat(normalised, 2), atol=1e-4)  # each slice copied twice
    assert [int(segmentation[0, z].any()) for z in range(12)] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    # And back: each original slice takes the probabilities of one preprocessed slice, never a blend of two.
    probabilities = np.stack([1 - np.linspace(0, 1, 12), np.linspace(0, 1, 12)])[:, :, None, None]
    probabilities = np.broadcast_to(probabilities, (2, 12, 16, 16)).astype(np.float32)
    back = probabilities_to_original_geometry(probabilities, properties, configuration=plan)
    distance = np.abs(back[1, :, 10, 10][:, None] - np.linspace(0, 1, 12)[None]).min(axis=1)
    assert distance.max() < 1e-5


def test_isotropic_case_is_interpolated_across_slices_even_in_a_plan_flagged_anisotropic(tmp_path):
    slice_values = np.array([10, 40, 20, 70, 30, 60], dtype=np.float32)
    image = np.repeat(slice_values[:, None, None], 20, axis=1).repeat(20, axis=2)
    write_nifti(image, tmp_path / "thin_0000.nii.gz", spacing_zyx=(1.0, 1.0, 1.0))
    data, _, _ = preprocess_case(
        [tmp_path / "thin_0000.nii.gz"], None, configuration=configuration([0.5, 1.0, 1.0], anisotropic=True)
    )
    normalised = (slice_values - image.mean()) / image.std()
    # Cubic between 1 mm slices: new values appear between the old ones (nearest would only copy them).
    assert np.abs(data[0, :, 10, 10][:, None] - normalised[None]).min(axis=1).max() > 0.05


@pytest.mark.parametrize("axis_orders", [(1, 1, 1), (0, 1, 1), (None, 3, 3)])
def test_rows_of_a_resampling_put_together_equal_the_whole(axis_orders):
    rng = np.random.default_rng(3)
    data = rng.random((2, 7, 9, 11), dtype=np.float32)
    new_shape = (7 if axis_orders[0] is None else 15, 20, 6)
    whole = resample_channels(data, new_shape, axis_orders=axis_orders)
    for axis in (0, 1):
        slabs = [resample_channels(data, new_shape, axis_orders=axis_orders, rows=(axis, slice(start, start + 4)))
                 for start in range(0, new_shape[axis], 4)]
        assert np.array_equal(np.concatenate(slabs, axis=axis + 1), whole)


def test_label_map_by_slabs_equals_the_whole_argmax(monkeypatch):
    """Slab-wise export gives exactly the label map of the whole probabilities, also with a transposed plan."""
    rng = np.random.default_rng(4)
    logits = scipy.ndimage.gaussian_filter(rng.normal(size=(4, 10, 12, 8)), (0, 1, 1, 1)).astype(np.float32) * 30
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    plan = Configuration(**{**configuration((1.0, 1.0, 4.0)).__dict__, "transpose_forward": (2, 0, 1),
                            "transpose_backward": (1, 2, 0)})
    properties = {"spacing_after_resampling": [1.0, 1.0, 4.0], "spacing_after_crop": [0.5, 0.7, 5.0],
                  "shape_after_crop": [20, 17, 6], "crop_bbox": [[0, 17], [2, 8], [1, 21]],
                  "shape_before_crop": [17, 9, 23]}
    full = probabilities_to_original_geometry(probabilities, properties, configuration=plan)
    for slab_voxels in (10**9, 1):
        monkeypatch.setattr(export_module, "LABEL_MAP_SLAB_VOXELS", slab_voxels)
        label_map = probabilities_to_label_map(probabilities, properties, configuration=plan)
        assert np.array_equal(label_map, np.argmax(full, axis=0))
