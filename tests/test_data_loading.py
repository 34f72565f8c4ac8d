"""Patch sampling and augmentation from the preprocessed format: shapes, foreground oversampling, anisotropy, seeds."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.errors import UserError
from autoseg.io import case_arrays
from autoseg.io.images import read_image
from autoseg.preprocessing.storage import write_preprocessed_case as store_preprocessed_case
from autoseg.records.plans import Configuration
from autoseg.records.preprocessed_case import PreprocessedCase, preprocessed_case_ids
from autoseg.training.augmentation import (
    AugmentationSettings,
    is_anisotropic_patch,
    sampled_patch_size,
)
from autoseg.training.data_loading import deep_supervision_scales, make_training_loader, make_validation_loader
from autoseg.training.patch_sampling import forced_foreground_samples
from autoseg.transforms.case import preprocess_case


def write_preprocessed_case(folder: Path, identifier: str, image: np.ndarray, segmentation: np.ndarray) -> None:
    """Write CASE.npy / CASE_seg.npy / CASE.json as docs/design.md specifies (JSON last)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{identifier}.npy", image.astype(np.float32))
    np.save(folder / f"{identifier}_seg.npy", segmentation.astype(np.int8))
    rng = np.random.default_rng(0)
    locations = {}
    for label in np.unique(segmentation):
        if label <= 0:
            continue
        points = np.argwhere(segmentation[0] == label)
        if len(points) > 10_000:
            points = points[rng.choice(len(points), 10_000, replace=False)]
        locations[str(int(label))] = points.tolist()
    properties = {
        "identifier": identifier,
        "shape_after_resampling": list(image.shape[1:]),
        "class_locations": locations,
    }
    (folder / f"{identifier}.json").write_text(json.dumps(properties))


def configuration(dimension: int, patch_size: list[int], strides: list[list[int]]) -> Configuration:
    """What the loaders read: dimension, patch and the network's strides (for deep-supervision targets)."""
    return Configuration(name="test", dimension=dimension, spacing=(1.0,) * dimension, patch_size=tuple(patch_size),
                         batch_size=2, network={"strides": strides}, normalization=(), resampling={})


@pytest.fixture
def sparse_foreground_folder(tmp_path: Path) -> Path:
    """Four 3D cases of 48^3 with a tiny 3^3 blob of label 1 or 2: random patches rarely contain foreground."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "preprocessed" / "3d_fullres"
    for index in range(4):
        image = rng.normal(size=(1, 48, 48, 48))
        segmentation = np.zeros((1, 48, 48, 48))
        corner = rng.integers(2, 43, size=3)
        segmentation[0, corner[0] : corner[0] + 3, corner[1] : corner[1] + 3, corner[2] : corner[2] + 3] = 1 + index % 2
        write_preprocessed_case(folder, f"case_{index}", image, segmentation)
    return folder


CONFIG_3D = configuration(3, [16, 16, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
CASES = [f"case_{index}" for index in range(4)]


def test_training_batches_have_the_promised_shapes_and_dtypes(sparse_foreground_folder: Path) -> None:
    scales = deep_supervision_scales(CONFIG_3D)
    with make_training_loader(
        sparse_foreground_folder,
        CASES,
        configuration=CONFIG_3D,
        batch_size=3,
        num_workers=0,
        seed=0,
        deep_supervision_scales=scales,
    ) as loader:
        batch = next(loader)
    assert batch["data"].dtype == torch.float32 and batch["data"].shape == (3, 1, 16, 16, 16)
    assert [tuple(target.shape) for target in batch["target"]] == [(3, 1, 16, 16, 16), (3, 1, 8, 8, 8)]
    assert all(target.dtype == torch.int64 for target in batch["target"])
    assert set(torch.unique(batch["target"][0]).tolist()) <= {0, 1, 2}
    assert len(batch["keys"]) == 3


def test_at_least_a_third_of_every_batch_contains_foreground(sparse_foreground_folder: Path) -> None:
    with make_training_loader(
        sparse_foreground_folder, CASES, configuration=CONFIG_3D, batch_size=5, num_workers=0, seed=3
    ) as loader:
        for _ in range(8):
            target = next(loader)["target"]
            samples_with_foreground = int((target.flatten(1) > 0).any(dim=1).sum())
            assert samples_with_foreground >= 2  # the last 5 - round(5 * 0.67) = 2 samples are forced
    # Without oversampling the tiny blobs are mostly missed: the guarantee above comes from the sampler.
    with make_validation_loader(
        sparse_foreground_folder,
        CASES,
        configuration=CONFIG_3D,
        batch_size=5,
        num_workers=0,
        seed=3,
        oversample_foreground=0.0,
    ) as loader:
        hits = sum(int((next(loader)["target"].flatten(1) > 0).any(dim=1).sum()) for _ in range(8))
    assert hits < 8 * 5 / 3


def test_foreground_is_forced_on_the_reference_number_of_samples_per_batch(tmp_path: Path) -> None:
    # One foreground voxel in a large case: a random 8^3 patch misses it; a forced one is centred on it.
    segmentation = np.zeros((1, 8, 300, 300))
    segmentation[0, 4, 150, 150] = 1
    write_preprocessed_case(tmp_path, "needle", np.zeros(segmentation.shape), segmentation)
    config = configuration(3, [8, 8, 8], [[1, 1, 1], [2, 2, 2]])
    # nnU-Net v2: the last B - round(B * 0.67) samples of a batch (Python rounding).
    reference = {1: 0, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 3, 9: 3, 10: 3, 11: 4, 12: 4}
    for batch_size, expected in reference.items():
        assert forced_foreground_samples(batch_size, 0.33) == expected
        with make_validation_loader(
            tmp_path, ["needle"], configuration=config, batch_size=batch_size, num_workers=0, seed=batch_size
        ) as loader:
            hits = [(next(loader)["target"].flatten(1) > 0).any(dim=1).tolist() for _ in range(3)]
        assert all(batch == [False] * (batch_size - expected) + [True] * expected for batch in hits), batch_size


def test_with_an_ignore_label_random_patches_are_centred_on_annotated_voxels(tmp_path: Path) -> None:
    # Sparse annotation: everything is ignore (2) but a 12^3 corner of background with a 2^3 object (1). The case
    # goes through real preprocessing, which samples the annotated voxels' locations.
    label = np.full((16, 96, 96), 2, dtype=np.uint8)
    label[:12, :12, :12] = 0
    label[4:6, 4:6, 4:6] = 1
    for array, name in ((np.random.default_rng(0).normal(size=label.shape), "sparse_0000"), (label, "sparse")):
        image = sitk.GetImageFromArray(array.astype(np.float32 if array is not label else np.uint8))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    plan = Configuration(name="test", dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16), batch_size=6,
                         network={"strides": [[1, 1, 1], [2, 2, 2]]},
                         normalization=({"scheme": "zscore", "use_mask": False},),
                         resampling={"image_order": 3, "label_order": 1, "coarse_axis_order": 0})
    data, segmentation, properties = preprocess_case(
        [tmp_path / "sparse_0000.nii.gz"], tmp_path / "sparse.nii.gz", configuration=plan, classes=(1,),
        ignore_label=2,
    )
    annotated = np.asarray(properties["class_locations"]["annotated"])
    assert len(annotated) == 12**3 and (segmentation[0][tuple(annotated.T)] != 2).all()
    store_preprocessed_case(tmp_path / "preprocessed", "sparse", data, segmentation, properties)

    def samples_with_annotation(ignore_label: int | None) -> list[bool]:
        with make_validation_loader(tmp_path / "preprocessed", ["sparse"], configuration=plan, batch_size=6,
                                    num_workers=0, seed=0, ignore_label=ignore_label) as loader:
            return [bool(has) for _ in range(5) for has in (next(loader)["target"] != 2).flatten(1).any(dim=1)]

    assert all(samples_with_annotation(2))  # the reference's rule: 4 of 6 on annotated voxels, 2 on foreground
    assert sum(samples_with_annotation(None)) < 20  # uniform positions (no ignore label): mostly ignored voxels


def test_validation_patches_are_exact_unaugmented_crops(tmp_path: Path) -> None:
    # Each voxel stores its own coordinates, so a patch proves where it came from and that nothing was resampled.
    z, y, x = np.meshgrid(np.arange(20), np.arange(30), np.arange(25), indexing="ij")
    image = (z * 10_000 + y * 100 + x)[None].astype(np.float32)
    segmentation = np.zeros((1, 20, 30, 25))
    segmentation[0, 5:8, 5:8, 5:8] = 1
    write_preprocessed_case(tmp_path, "coords", image, segmentation)
    config = configuration(3, [8, 12, 10], [[1, 1, 1], [2, 2, 2]])
    with make_validation_loader(tmp_path, ["coords"], configuration=config, batch_size=4, num_workers=0, seed=0) as val:
        data = next(val)["data"].numpy()
    for patch in data[:, 0]:
        origin = patch[0, 0, 0]
        assert np.array_equal(patch - origin, image[0, :8, :12, :10] - image[0, 0, 0, 0])


def test_images_smaller_than_the_patch_are_padded(tmp_path: Path) -> None:
    image = np.ones((2, 6, 10, 8))  # two channels, smaller than the patch on every axis
    segmentation = np.ones((1, 6, 10, 8))
    write_preprocessed_case(tmp_path, "small", image, segmentation)
    config = configuration(3, [8, 16, 16], [[1, 1, 1], [2, 2, 2]])
    with make_training_loader(tmp_path, ["small"], configuration=config, batch_size=2, num_workers=0, seed=0) as loader:
        batch = next(loader)
    assert batch["data"].shape == (2, 2, 8, 16, 16)
    foreground_voxels = (batch["target"] > 0).flatten(1).sum(dim=1)
    # Labelled voxels can only come from the image (6*10*8 = 480; scaling up to 1.4x can show more of the image).
    assert ((foreground_voxels > 0) & (foreground_voxels < 8 * 16 * 16)).all()


def test_anisotropic_patches_are_augmented_in_plane_only(tmp_path: Path) -> None:
    # Label = slice index (1..3 repeating): out-of-plane rotation would mix labels within a slice.
    depth = 12
    segmentation = np.broadcast_to((np.arange(depth) % 3 + 1)[:, None, None], (depth, 96, 96))[None]
    write_preprocessed_case(tmp_path, "slices", np.zeros((1, depth, 96, 96)), np.ascontiguousarray(segmentation))
    always = replace(AugmentationSettings(), rotation_probability=1.0, scaling_probability=1.0).only_spatial()

    def slice_label_sets(patch_size: list[int]) -> list[set[int]]:
        config = configuration(3, patch_size, [[1, 1, 1], [1, 2, 2]])
        with make_training_loader(
            tmp_path, ["slices"], configuration=config, batch_size=4, num_workers=0, seed=1, augmentation=always
        ) as loader:
            target = next(loader)["target"].numpy()
        return [set(np.unique(sample[0, index])) - {0} for sample in target for index in range(patch_size[0])]

    assert is_anisotropic_patch([3, 32, 32]) and is_anisotropic_patch([10, 32, 40])
    # The reference's test: the longest edge against axis 0 (the thick-slice axis), more than 3x.
    assert not is_anisotropic_patch([12, 32, 36]) and not is_anisotropic_patch([32, 8, 32])
    assert sampled_patch_size([3, 32, 32], always)[0] == 3  # the coarse axis is not enlarged
    assert all(len(labels) == 1 for labels in slice_label_sets([3, 32, 32]))
    # Control: an isotropic-enough patch is rotated in 3D, and then slices do mix.
    assert not is_anisotropic_patch([8, 16, 16])
    assert any(len(labels) > 1 for labels in slice_label_sets([8, 16, 16]))


def _stripe_angles(target: np.ndarray) -> list[float]:
    """Per sample, the angle (degrees, 0..90) between the stripes' normal and the x axis, from the structure tensor
    of the first in-plane slice: 0 for unrotated vertical stripes, ``|theta| mod 180`` folded to 0..90 after a
    rotation by theta."""
    angles = []
    for sample in target:
        plane = sample[0].reshape(-1, *sample.shape[-2:])[0].astype(float)
        gradient_y, gradient_x = np.gradient(plane)
        xx, yy, xy = (gradient_x**2).sum(), (gradient_y**2).sum(), (gradient_x * gradient_y).sum()
        angle = abs(np.degrees(0.5 * np.arctan2(2 * xy, xx - yy)))
        angles.append(min(angle, 180 - angle))
    return angles


@pytest.mark.parametrize(
    ("patch_size", "measured_range"),
    # Three +-30 deg rotations about the three axes compose to a slightly larger turn of the stripes in a slice.
    [([4, 32, 32], (60, 90)), ([48, 48], (60, 90)), ([32, 64], (8, 18)), ([16, 16, 16], (15, 45))],
    ids=["anisotropic-3d", "2d", "elongated-2d", "isotropic-3d"],
)
def test_rotation_range_applied_to_each_kind_of_patch(tmp_path: Path, patch_size, measured_range) -> None:
    # Vertical stripes (labels 1 and 2, 4 voxels wide): a rotation by theta turns them by theta, which the
    # structure tensor measures. The reference's ranges: 180 deg in-plane for anisotropic ("dummy 2D") 3D
    # patches and square-ish 2D ones, 15 deg for 2D patches more than 1.5x longer than wide, 30 deg in 3D.
    depth = 1 if len(patch_size) == 2 else 48
    stripes = (np.arange(160) // 4) % 2 + 1
    segmentation = np.ascontiguousarray(np.broadcast_to(stripes, (1, depth, 160, 160)))
    write_preprocessed_case(tmp_path, "stripes", np.zeros(segmentation.shape), segmentation)
    always = replace(AugmentationSettings(), rotation_probability=1.0, scaling_probability=0.0).only_spatial()
    config = configuration(len(patch_size), patch_size, [[1] * len(patch_size), [2] * len(patch_size)])
    with make_training_loader(
        tmp_path, ["stripes"], configuration=config, batch_size=8, num_workers=0, seed=0, augmentation=always
    ) as loader:
        angles = [angle for _ in range(5) for angle in _stripe_angles(next(loader)["target"].numpy())]
    # The largest of 40 measured turns: from +-180 deg, all 40 within 60 deg (mod 180) has probability (2/3)^40.
    assert measured_range[0] < max(angles) <= measured_range[1]


@pytest.mark.parametrize(
    ("patch_size", "shape"),
    [([40, 56], (1, 1, 160, 160)), ([16, 24, 16], (1, 64, 64, 64))],
    ids=["2d", "3d"],
)
def test_rotation_and_scaling_never_reach_past_the_sampled_region(tmp_path: Path, patch_size, shape) -> None:
    # A constant image whose centre is the only foreground: forced patches are centred there, far from the image
    # border, so any 0 in the output would be padding pulled in because the cut-out region was too small.
    image = np.ones(shape)
    segmentation = np.ones(shape)
    write_preprocessed_case(tmp_path, "constant", image, segmentation)
    properties = json.loads((tmp_path / "constant.json").read_text())
    properties["class_locations"] = {
        "1": [[0 if len(patch_size) == 2 else shape[1] // 2, shape[2] // 2, shape[3] // 2]]
    }
    (tmp_path / "constant.json").write_text(json.dumps(properties))
    settings = replace(AugmentationSettings(), rotation_probability=1.0, scaling_probability=1.0).only_spatial()
    config = configuration(len(patch_size), patch_size, [[1] * len(patch_size), [2] * len(patch_size)])
    with make_training_loader(
        tmp_path,
        ["constant"],
        configuration=config,
        batch_size=6,
        num_workers=0,
        seed=0,
        oversample_foreground=1.0,
        augmentation=settings,
    ) as loader:
        batch = next(loader)
    assert (batch["target"] == 1).all()
    assert torch.allclose(batch["data"], torch.ones_like(batch["data"]), atol=1e-3)


def test_2d_configuration_samples_slices_of_1xhxw_cases(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for index in range(3):
        image = rng.normal(size=(1, 1, 70, 90))
        segmentation = np.zeros((1, 1, 70, 90))
        segmentation[0, 0, 30:40, 40:60] = 1
        write_preprocessed_case(tmp_path, f"us_{index}", image, segmentation)
    config = configuration(2, [64, 96], [[1, 1], [2, 2], [2, 2]])
    with make_training_loader(
        tmp_path,
        ["us_0", "us_1", "us_2"],
        configuration=config,
        batch_size=3,
        num_workers=0,
        seed=0,
        deep_supervision_scales=deep_supervision_scales(config),
    ) as loader:
        batch = next(loader)
    assert batch["data"].shape == (3, 1, 64, 96)
    assert [tuple(target.shape) for target in batch["target"]] == [(3, 1, 64, 96), (3, 1, 32, 48)]
    assert int((batch["target"][0].flatten(1) > 0).any(dim=1).sum()) >= 1


def test_the_same_seed_gives_the_same_batches_also_with_worker_processes(sparse_foreground_folder: Path) -> None:
    def first_batches(seed: int, workers: int) -> list[np.ndarray]:
        with make_training_loader(
            sparse_foreground_folder, CASES, configuration=CONFIG_3D, batch_size=2, num_workers=workers, seed=seed
        ) as loader:
            return [next(loader)["data"].numpy() for _ in range(3)]

    reference = first_batches(7, 0)
    assert all(np.array_equal(a, b) for a, b in zip(reference, first_batches(7, 0), strict=True))
    assert not np.array_equal(reference[0], first_batches(8, 0)[0])
    with_workers = first_batches(7, 2)
    assert all(np.array_equal(a, b) for a, b in zip(with_workers, first_batches(7, 2), strict=True))
    # The caller's numpy and Python random states are not consumed by in-process loading.
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    first_batches(7, 0)
    assert (np.random.rand(), random.random()) == expected


def test_a_missing_case_file_is_named(sparse_foreground_folder: Path) -> None:
    (sparse_foreground_folder / "case_2.json").unlink()
    with pytest.raises(UserError, match=r"case_2\.json"):
        make_training_loader(
            sparse_foreground_folder, CASES, configuration=CONFIG_3D, batch_size=2, num_workers=0, seed=0
        )


def test_real_hippocampus_cases_through_the_training_loader(hippocampus_root: Path, tmp_path: Path) -> None:
    identifiers = ["hippocampus_001", "hippocampus_004", "hippocampus_006"]
    for identifier in identifiers:
        image = read_image(hippocampus_root / "imagesTr" / f"{identifier}_0000.nii.gz").array.astype(np.float32)
        labels = np.rint(read_image(hippocampus_root / "labelsTr" / f"{identifier}.nii.gz").array).astype(np.int8)
        image = (image - image.mean()) / max(float(image.std()), 1e-8)
        write_preprocessed_case(tmp_path, identifier, image[None], labels[None])
    config = configuration(3, [40, 56, 40], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    with make_training_loader(
        tmp_path,
        identifiers,
        configuration=config,
        batch_size=3,
        num_workers=0,
        seed=0,
        deep_supervision_scales=deep_supervision_scales(config),
    ) as loader:
        batch = next(loader)
    assert batch["data"].shape == (3, 1, 40, 56, 40)
    assert torch.isfinite(batch["data"]).all()
    assert [tuple(target.shape[2:]) for target in batch["target"]] == [(40, 56, 40), (20, 28, 20), (10, 14, 10)]
    assert set(torch.unique(batch["target"][0]).tolist()) <= {0, 1, 2}
    assert (batch["target"][0].flatten(1) > 0).any(dim=1).all()  # these images are crops around the hippocampus


def test_preprocessing_writes_a_case_where_the_record_names_its_files(tmp_path: Path) -> None:
    image, labels = np.zeros((1, 4, 5, 6), dtype=np.float32), np.zeros((1, 4, 5, 6), dtype=np.int8)
    store_preprocessed_case(tmp_path, "case_007", image, labels, {"shape_after_resampling": [4, 5, 6]})
    case = PreprocessedCase.at(tmp_path, "case_007")
    assert all(path.is_file() for path in case.paths)
    assert case.read_properties() == {"shape_after_resampling": [4, 5, 6]}
    assert preprocessed_case_ids(tmp_path) == ["case_007"]


def compress_cases(source: Path, destination: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store every case of ``source`` again in ``destination``, compressed (the threshold lowered to 1 byte)."""
    monkeypatch.setattr(case_arrays, "COMPRESS_FROM_BYTES", 1)
    for identifier in preprocessed_case_ids(source):
        case = PreprocessedCase.at(source, identifier)
        store_preprocessed_case(destination, identifier, np.load(case.image_path), np.load(case.segmentation_path),
                                case.read_properties(), patch_size=[8, 8, 8])
    monkeypatch.undo()


def test_a_compressed_case_is_read_patch_by_patch_and_equals_the_npy_case(
    sparse_foreground_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = tmp_path / "compressed"
    compress_cases(sparse_foreground_folder, compressed, monkeypatch)
    case = PreprocessedCase.at(compressed, "case_0")
    assert case.is_compressed and not case.image_path.exists() and not case.segmentation_path.exists()
    assert sorted(path.name for path in compressed.iterdir() if "case_0." in path.name or "case_0_" in path.name) == [
        "case_0.b2nd", "case_0.json", "case_0_seg.b2nd"]
    image, labels = case.open_image(), case.open_segmentation()
    assert isinstance(image, blosc2.NDArray) and image.chunks == (1, 8, 8, 8) and image.blocks == (1, 8, 8, 8)
    plain = PreprocessedCase.at(sparse_foreground_folder, "case_0")
    window = (slice(None), slice(3, 19), slice(40, 48), slice(0, 16))  # touches 2 x 1 x 2 chunks
    assert np.array_equal(image[window], plain.open_image()[window])
    assert np.array_equal(labels[window], plain.open_segmentation()[window]) and labels.dtype == np.int8
    assert np.array_equal(image[:, 5], plain.open_image()[:, 5])  # a 2D configuration's slice


@pytest.mark.parametrize("workers", [0, 2])
def test_compressed_cases_give_the_same_batches_as_npy_cases(
    sparse_foreground_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    compressed = tmp_path / "compressed"
    compress_cases(sparse_foreground_folder, compressed, monkeypatch)

    def batches(folder: Path) -> list[dict]:
        with make_training_loader(folder, CASES, configuration=CONFIG_3D, batch_size=3, num_workers=workers,
                                  seed=5) as loader:
            return [next(loader) for _ in range(4)]

    for plain, packed in zip(batches(sparse_foreground_folder), batches(compressed), strict=True):
        assert torch.equal(plain["data"], packed["data"]) and plain["keys"] == packed["keys"]
        assert all(torch.equal(a, b) for a, b in zip(plain["target"], packed["target"], strict=True))
