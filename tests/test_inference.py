"""Inference: sliding-window prediction, the predictor object and `autoseg predict`, end to end on real images."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_helpers import (
    ISOTROPIC_RESAMPLING,
    as_configuration,
    first_identifiers,
    link_cases,
    make_cascade_model_folder,
    make_model_folder,
    tiny_configuration,
)

from autoseg.cli import main
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import UserError
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.label_maps import label_map_from_probabilities, previous_stage_channels
from autoseg.inference.loading import load_ensemble, load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.inference.sliding_window import (
    gaussian_importance_map,
    mirror_combinations,
    predict_sliding_window,
    tile_starts,
)
from autoseg.io.images import Geometry, read_image, read_image_header, write_image
from autoseg.records.dataset import RawDataset
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.utils.files import write_json


def predict_in_float32(*args, **kwargs) -> torch.Tensor:
    """The sliding window in float32, whatever ``auto`` means on this CPU: these tests check exact arithmetic."""
    return predict_sliding_window(*args, precision="float32", **kwargs)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: on a machine whose cores are shared, two OpenMP threads make small convolutions ~40x slower.
    The previous setting is restored so that other test modules are unaffected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Identity(torch.nn.Module):
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.clone()


def one_hot_volume(shape: tuple[int, ...], num_classes: int, seed: int = 0) -> torch.Tensor:
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, size=shape))
    return torch.nn.functional.one_hot(labels, num_classes).permute(3, 0, 1, 2).float()


# ----------------------------------------------------------------------------------------------------------------
# Sliding window
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mirror_axes", [None, (0, 1, 2)])
def test_identity_network_gives_back_one_hot_input_exactly(mirror_axes):
    data = one_hot_volume((23, 37, 29), 3)
    logits = predict_in_float32(Identity(), data, patch_size=(16, 16, 12), num_classes=3, step_size=0.5,
                                    mirror_axes=mirror_axes, batch_size=3)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, data)


@pytest.mark.parametrize("size,patch,step", [(100, 16, 0.5), (17, 16, 0.5), (16, 16, 0.5), (203, 48, 0.33),
                                             (40, 7, 1.0), (9, 1, 0.5)])
def test_tiles_cover_every_voxel_with_steps_no_larger_than_requested(size, patch, step):
    (starts,) = tile_starts((size,), (patch,), step_size=step)
    covered = np.zeros(size, dtype=bool)
    for start in starts:
        assert 0 <= start <= size - patch
        covered[start : start + patch] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(0 < b - a <= step * patch + 0.5 for a, b in itertools.pairwise(starts))


def test_gaussian_importance_map_is_positive_peaked_in_the_centre_and_cached():
    importance = gaussian_importance_map((40, 56, 40))
    assert importance.shape == (40, 56, 40)
    assert (importance > 0).all()
    assert importance.max() == 1.0
    assert importance[0, 0, 0] < importance[20, 28, 20]
    assert torch.equal(importance, importance.flip(0)) and torch.equal(importance, importance.flip(1))
    assert gaussian_importance_map((40, 56, 40)) is importance


def test_mirror_combinations_are_every_subset():
    assert len(mirror_combinations((0, 1, 2))) == 8
    assert mirror_combinations(None) == [()]


def mirror_symmetric_network(in_channels: int, out_channels: int, dimension: int) -> torch.nn.Module:
    """Convolutions whose kernels are symmetric under every flip: the network commutes with mirroring."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if dimension == 3 else torch.nn.Conv2d
    network = torch.nn.Sequential(
        conv(in_channels, 4, 3, padding=1), torch.nn.Tanh(), conv(4, out_channels, 3, padding=1)
    )
    with torch.no_grad():
        for layer in (network[0], network[2]):
            weight = layer.weight
            spatial = list(range(2, weight.ndim))
            symmetric = sum(weight.flip(list(dims)) for n in range(len(spatial) + 1)
                            for dims in itertools.combinations(spatial, n))
            weight.copy_(symmetric / 2 ** len(spatial))
    return network.eval()


def test_mirroring_a_mirror_equivariant_network_changes_nothing_but_changes_a_generic_one():
    data = torch.randn(2, 20, 24, 22)
    symmetric = mirror_symmetric_network(2, 3, 3)
    plain = predict_in_float32(symmetric, data, patch_size=(16, 16, 16), num_classes=3)
    mirrored = predict_in_float32(symmetric, data, patch_size=(16, 16, 16), num_classes=3, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-5)

    torch.manual_seed(1)
    generic = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    plain = predict_in_float32(generic, data, patch_size=(16, 16, 16), num_classes=3)
    mirrored = predict_in_float32(generic, data, patch_size=(16, 16, 16), num_classes=3, mirror_axes=(0, 1, 2))
    assert (mirrored - plain).abs().max() > 1e-3


def test_image_smaller_than_patch_is_padded_and_cropped_back():
    data = one_hot_volume((5, 30, 9), 2)
    logits = predict_in_float32(Identity(), data, patch_size=(8, 16, 16), num_classes=2, mirror_axes=(0, 2))
    assert logits.shape == data.shape
    assert torch.equal(logits, data)


def test_2d_network_predicts_a_volume_slice_by_slice():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(2, 3, 3, padding=1).eval()  # would fail on a 5D input
    data = torch.randn(2, 6, 32, 24)
    logits = predict_in_float32(network, data, patch_size=(32, 24), num_classes=3, mirror_axes=None)
    with torch.no_grad():
        expected = torch.stack([network(data[:, z][None])[0] for z in range(data.shape[1])], dim=1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # Larger in-plane image than the patch, with mirroring: still one prediction per slice, one-hot identity exact.
    one_hot = one_hot_volume((4, 40, 33), 3)
    assert torch.equal(predict_in_float32(Identity(), one_hot, patch_size=(16, 16), num_classes=3,
                                              mirror_axes=(0, 1)), one_hot)


# ----------------------------------------------------------------------------------------------------------------
# Model folders with tiny randomly initialised networks, predicted end to end on real images
# ----------------------------------------------------------------------------------------------------------------

def assert_same_geometry(output: Path, reference: Path) -> None:
    written, expected = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert written.GetSize() == expected.GetSize()
    assert written.GetSpacing() == expected.GetSpacing()
    assert written.GetOrigin() == expected.GetOrigin()
    assert written.GetDirection() == expected.GetDirection()
    assert read_image_header(output) == read_image_header(reference)


@pytest.fixture(scope="module")
def hippocampus_model(tmp_path_factory, hippocampus_root) -> Path:
    configuration = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    return make_model_folder(tmp_path_factory.mktemp("work") / "Dataset004_Hippocampus", hippocampus_root,
                             {"3d_fullres": configuration}, folds=(0, 1))


def test_predict_command_writes_hippocampus_label_maps_with_the_input_geometry(
    hippocampus_model, hippocampus_root, tmp_path
):
    identifiers = first_identifiers(hippocampus_root, 3)
    inputs = link_cases(hippocampus_root, tmp_path / "in", identifiers)
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
                 "--workers", "0", "--device", "cpu", "--threads", "1", "--save-probabilities"])
    assert code == 0
    for identifier in identifiers:
        output = tmp_path / "out" / f"{identifier}.nii.gz"
        assert_same_geometry(output, inputs / f"{identifier}_0000.nii.gz")
        label_map = read_image(output).array
        assert set(np.unique(label_map)) <= {0, 1, 2}
        with np.load(tmp_path / "out" / f"{identifier}.npz", allow_pickle=False) as stored:
            probabilities = stored["probabilities"]
        assert probabilities.shape == (3, *label_map.shape)
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-4)
        assert np.array_equal(probabilities.argmax(0), label_map)


def test_sharded_and_background_worker_predictions_equal_a_single_process_run(
    hippocampus_model, hippocampus_root, tmp_path
):
    identifiers = first_identifiers(hippocampus_root, 3)
    inputs = link_cases(hippocampus_root, tmp_path / "in", identifiers)
    common = ["predict", "-i", str(inputs), "-m", str(hippocampus_model), "--device", "cpu", "--threads", "1",
              "--no-tta"]
    assert main([*common, "-o", str(tmp_path / "single"), "--workers", "0"]) == 0
    for part in (0, 1):
        assert main([*common, "-o", str(tmp_path / "sharded"), "--workers", "0",
                     "--part-id", str(part), "--num-parts", "2"]) == 0
    assert main([*common, "-o", str(tmp_path / "workers"), "--workers", "2"]) == 0
    for identifier in identifiers:
        single = read_image(tmp_path / "single" / f"{identifier}.nii.gz").array
        assert np.array_equal(read_image(tmp_path / "sharded" / f"{identifier}.nii.gz").array, single)
        assert np.array_equal(read_image(tmp_path / "workers" / f"{identifier}.nii.gz").array, single)


def test_continue_skips_cases_already_written(hippocampus_model, hippocampus_root, tmp_path, capsys):
    identifiers = first_identifiers(hippocampus_root, 2)
    inputs = link_cases(hippocampus_root, tmp_path / "in", identifiers)
    common = ["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
              "--device", "cpu", "--threads", "1", "--no-tta", "--workers", "0", "-f", "0"]
    assert main([*common, "--part-id", "0", "--num-parts", "2"]) == 0
    first = tmp_path / "out" / f"{identifiers[0]}.nii.gz"
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*common, "--continue"]) == 0
    assert "1 already there" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    assert (tmp_path / "out" / f"{identifiers[1]}.nii.gz").is_file()


def test_fold_ensemble_averages_the_logits_of_each_fold_as_the_reference(hippocampus_model, hippocampus_root):
    both = load_predictor(ModelSource.checkpoints(hippocampus_model), PredictionOptions(device="cpu", tta=False))
    assert both.trained_model.folds == ("0", "1")
    case = both.preprocess(load_raw_dataset(hippocampus_root).training_cases[0].images)
    singles = [load_predictor(ModelSource.checkpoints(hippocampus_model, folds=(fold,)),
                              PredictionOptions(device="cpu", tta=False))
               for fold in (0, 1)]
    # log(softmax) is the logits up to a per-voxel constant, so softmax(mean(log p_fold)) = softmax(mean logits).
    log_probabilities = [torch.log(torch.from_numpy(single.predict_case(case)).double()) for single in singles]
    expected = torch.softmax((log_probabilities[0] + log_probabilities[1]) / 2, dim=0).float().numpy()
    ensembled = both.predict_case(case)
    np.testing.assert_allclose(ensembled, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ensembled.sum(0), 1.0, rtol=1e-5)
    averaged_probabilities = (np.exp(log_probabilities[0].numpy()) + np.exp(log_probabilities[1].numpy())) / 2
    assert np.abs(ensembled - averaged_probabilities).max() > 1e-3  # the two rules differ on this case


def test_predict_array_equals_predicting_the_file(hippocampus_model, hippocampus_root, tmp_path):
    identifier = first_identifiers(hippocampus_root, 1)[0]
    inputs = link_cases(hippocampus_root, tmp_path / "in", [identifier])
    predictor = load_predictor(ModelSource.checkpoints(hippocampus_model, folds=(0,)),
                               PredictionOptions(device="cpu", tta=False))
    ModelEnsemble([predictor]).predict_files([[inputs / f"{identifier}_0000.nii.gz"]], [tmp_path / "out.nii.gz"],
                                             progress=False)
    image = read_image(inputs / f"{identifier}_0000.nii.gz")
    prediction = predictor.predict_array(image.array, spacing=image.geometry.spacing, return_probabilities=True)
    assert prediction.label_map.shape == image.array.shape
    assert prediction.probabilities.shape == (3, *image.array.shape)
    assert np.array_equal(prediction.label_map, read_image(tmp_path / "out.nii.gz").array)


def test_model_folder_mistakes_are_user_errors_naming_the_file(hippocampus_model, hippocampus_root, tmp_path, capsys):
    with pytest.raises(UserError, match="fold_3"):
        load_predictor(ModelSource.checkpoints(hippocampus_model, folds=(3,)), PredictionOptions(device="cpu"))
    with pytest.raises(UserError, match=r"no plans\.json"):
        load_predictor(ModelSource.checkpoints(tmp_path), PredictionOptions(device="cpu"))
    inputs = link_cases(hippocampus_root, tmp_path / "in", first_identifiers(hippocampus_root, 1))
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
                 "-c", "3d_lowres", "--device", "cpu", "--threads", "1"])
    assert code == 2
    assert "3d_lowres" in capsys.readouterr().err
    (inputs / "scan.nii.gz").write_bytes(b"")  # no channel index
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
                 "--device", "cpu", "--threads", "1"])
    assert code == 2
    assert "scan.nii.gz" in capsys.readouterr().err
    (inputs / "scan.nii.gz").unlink()
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image")
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(hippocampus_model),
                 "--device", "cpu", "--threads", "1", "--workers", "0", "--no-tta"])
    assert code == 2
    assert "broken_0000.nii.gz" in capsys.readouterr().err


def test_2d_model_predicts_real_hc18_images_in_their_own_geometry(hc18_root, tmp_path):
    configuration = tiny_configuration(dimension=2, spacing=(1.0, 0.6, 0.6), patch_size=(128, 128), features=(4, 8, 8))
    model = make_model_folder(tmp_path / "work" / "Dataset018_HC18", hc18_root, {"2d": configuration})
    identifiers = first_identifiers(hc18_root, 2)
    inputs = link_cases(hc18_root, tmp_path / "in", identifiers)
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu",
                 "--threads", "1", "--workers", "0"]) == 0
    for identifier in identifiers:
        assert_same_geometry(tmp_path / "out" / f"{identifier}.nii.gz", inputs / f"{identifier}_0000.nii.gz")


def test_2d_model_predicts_a_3d_volume_slice_by_slice(hippocampus_root, tmp_path):
    configuration = tiny_configuration(dimension=2, spacing=(1.0, 1.0, 1.0), patch_size=(32, 32))
    model = make_model_folder(tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root, {"2d": configuration})
    identifier = first_identifiers(hippocampus_root, 1)[0]
    inputs = link_cases(hippocampus_root, tmp_path / "in", [identifier])
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu",
                 "--threads", "1", "--workers", "0"]) == 0
    assert_same_geometry(tmp_path / "out" / f"{identifier}.nii.gz", inputs / f"{identifier}_0000.nii.gz")


def test_cascade_runs_the_low_resolution_stage_and_feeds_it_as_one_hot_channels(hippocampus_root, tmp_path):
    model = make_cascade_model_folder(tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root)
    predictor = load_predictor(ModelSource.checkpoints(model, configuration="3d_cascade_fullres"),
                               PredictionOptions(device="cpu", tta=False))
    assert predictor.previous_stage is not None
    assert predictor.previous_stage.configuration_name == "3d_lowres"
    identifier = first_identifiers(hippocampus_root, 1)[0]
    inputs = link_cases(hippocampus_root, tmp_path / "in", [identifier])
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "-c",
                 "3d_cascade_fullres", "--device", "cpu", "--threads", "1", "--workers", "0", "--no-tta"]) == 0
    assert_same_geometry(tmp_path / "out" / f"{identifier}.nii.gz", inputs / f"{identifier}_0000.nii.gz")


def test_previous_stage_channels_are_one_hot_foreground_on_the_target_grid(hippocampus_root):
    dataset = load_raw_dataset(hippocampus_root)
    labels = torch.zeros(10, 12, 14, dtype=torch.long)
    labels[2:6, 3:9, 4:10] = 1
    labels[6:8, 3:9, 4:10] = 2
    probabilities = torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()
    channels = previous_stage_channels(probabilities, (20, 24, 28), dataset=dataset)
    assert channels.shape == (2, 20, 24, 28)
    assert set(channels.unique().tolist()) == {0.0, 1.0}
    assert channels.sum(0).max() == 1
    # Doubling each axis: the interiors of the boxes are exact, the volumes grow 8-fold (edges may round off).
    assert channels[0, 5:11, 7:17, 9:19].all() and channels[1, 13:15, 7:17, 9:19].all()
    assert channels[0].sum() == pytest.approx(8 * 144, rel=0.15)
    assert channels[1].sum() == pytest.approx(8 * 72, rel=0.25)


class BrightIsForeground(torch.nn.Module):
    """Logits (0, 10 x): class 1 wherever the normalised intensity is above the image mean. A perfect 'network' for
    a bright object on a dark background, so any geometry slip in preprocessing or export shows as lost overlap."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(batch[:, :1]), 10 * batch[:, :1]], dim=1)


def test_synthetic_volume_with_rotated_axes_and_anisotropic_spacing_is_segmented_in_place(tmp_path):
    # x is the thick axis here (3 mm), so the plan's transposition moves it first; the direction matrix is a
    # rotation with an axis flip and the origin is arbitrary. A zero border exercises the non-zero crop.
    shape = (60, 64, 20)
    spacing = (0.8, 0.7, 3.0)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = (((z - 25) * 0.8 / 14) ** 2 + ((y - 36) * 0.7 / 12) ** 2 + ((x - 9) * 3.0 / 18) ** 2) <= 1
    image = np.where(truth, 100.0, 20.0) + np.random.default_rng(0).normal(0, 3, shape)
    image[:, :, :2] = 0
    image[:4] = 0
    angle = np.deg2rad(30)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, -1.0)
    geometry = Geometry(spacing=spacing, origin=(-12.5, 40.25, 7.0), direction=direction, shape=shape)
    write_image(image.astype(np.float32), geometry, tmp_path / "synthetic_0000.nii.gz")

    configuration = tiny_configuration(dimension=3, spacing=(3.0, 1.0, 1.0), patch_size=(8, 32, 32))
    configuration["resampling"] = {**ISOTROPIC_RESAMPLING, "anisotropic": True}

    dataset = RawDataset(root=str(tmp_path), name="synthetic", channel_names=("MRI",),
                         labels={"background": 0, "object": 1}, file_ending=".nii.gz", num_training=0,
                         training_cases=())
    predictor = Predictor(configuration_name="3d_fullres", dataset=dataset,
                          configuration=as_configuration(configuration, name="3d_fullres", transpose=(2, 0, 1)),
                          networks=[BrightIsForeground()], options=PredictionOptions(device="cpu", tta=True))
    ModelEnsemble([predictor]).predict_files([[tmp_path / "synthetic_0000.nii.gz"]], [tmp_path / "synthetic.nii.gz"],
                                             progress=False)

    assert_same_geometry(tmp_path / "synthetic.nii.gz", tmp_path / "synthetic_0000.nii.gz")
    predicted = read_image(tmp_path / "synthetic.nii.gz").array == 1
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.9


def test_bfloat16_precision_accumulates_in_float32_and_stays_close_to_float32():
    data = torch.randn(2, 20, 24, 22)
    network = mirror_symmetric_network(2, 3, 3)
    exact = predict_sliding_window(network, data, patch_size=(16, 16, 16), num_classes=3, precision="float32")
    fast = predict_sliding_window(network, data, patch_size=(16, 16, 16), num_classes=3, precision="bfloat16")
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)
    assert not torch.equal(fast, exact)


def test_region_probabilities_paint_regions_in_their_declared_order(tmp_path):
    dataset = RawDataset(root=str(tmp_path), name="regions", channel_names=("MRI",),
                         labels={"background": 0, "whole": (1, 2), "core": 2}, file_ending=".nii.gz",
                         num_training=0, training_cases=(), regions_class_order=(1, 2))
    probabilities = np.zeros((2, 1, 1, 4), dtype=np.float32)
    probabilities[0, 0, 0] = [0.1, 0.9, 0.9, 0.2]  # whole tumour
    probabilities[1, 0, 0] = [0.0, 0.2, 0.8, 0.9]  # core, only inside "whole" in practice
    assert label_map_from_probabilities(probabilities, dataset=dataset)[0, 0].tolist() == [0, 1, 2, 2]


def test_recipe_ensemble_averages_configurations_in_the_input_grid_then_post_processes(hippocampus_root, tmp_path):
    model = make_model_folder(
        tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root,
        {"3d_fullres": tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24)),
         "2d": tiny_configuration(dimension=2, spacing=(1.0, 1.25, 1.25), patch_size=(32, 32))},
    )
    write_json(model / "inference.json", {"models": [{"configuration": "3d_fullres", "folds": [0]},
                                                     {"configuration": "2d", "folds": [0]}],
                                          "postprocessing": "postprocessing.json"})
    decision = {"keep_largest_foreground": False, "keep_largest_per_class": [1, 2], "connectivity": "full"}
    write_json(model / "postprocessing.json", decision)
    identifier = first_identifiers(hippocampus_root, 1)[0]
    inputs = link_cases(hippocampus_root, tmp_path / "in", [identifier])
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu",
                 "--threads", "1", "--workers", "0", "--save-probabilities"]) == 0

    image = read_image(inputs / f"{identifier}_0000.nii.gz")
    members = [load_predictor(ModelSource.checkpoints(model, configuration=name), PredictionOptions(device="cpu"))
               for name in ("3d_fullres", "2d")]
    expected = np.mean([member.predict_array(image.array, spacing=image.geometry.spacing,
                                             return_probabilities=True).probabilities for member in members], axis=0)
    with np.load(tmp_path / "out" / f"{identifier}.npz", allow_pickle=False) as stored:
        np.testing.assert_allclose(stored["probabilities"], expected, atol=1e-5)
    raw = expected.argmax(0).astype(np.uint8)
    post_processed = PostprocessingDecision.from_json(decision).apply(raw)
    assert not np.array_equal(post_processed, raw)  # the decision matters for this case
    written = read_image(tmp_path / "out" / f"{identifier}.nii.gz")
    assert np.array_equal(written.array, post_processed)
    # The ensemble predicts the array in memory exactly as the command predicted its file, post-processing included.
    models = load_ensemble(ModelSource.checkpoints(model), PredictionOptions(device="cpu"))
    assert np.array_equal(models.predict_array(image.array, spacing=image.geometry.spacing).label_map, written.array)
    assert_same_geometry(tmp_path / "out" / f"{identifier}.nii.gz", inputs / f"{identifier}_0000.nii.gz")

    # Naming one configuration overrides the recipe, and its post-processing (chosen for the ensemble) is not applied.
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "only_2d"), "-m", str(model), "-c", "2d",
                 "--device", "cpu", "--threads", "1", "--workers", "0"]) == 0
    only_2d = members[1].predict_array(image.array, spacing=image.geometry.spacing).label_map
    assert np.array_equal(read_image(tmp_path / "only_2d" / f"{identifier}.nii.gz").array, only_2d)


def test_default_thread_count_leaves_a_core_that_another_process_keeps_busy():
    import subprocess
    import sys
    import time

    from autoseg.commands.predict import idle_cpu_count
    from autoseg.utils.threads import available_cpus

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        threads = idle_cpu_count()
    finally:
        spinner.kill()
        spinner.wait()
    assert 1 <= threads <= max(1, available_cpus() - 1)
