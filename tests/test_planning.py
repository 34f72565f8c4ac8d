"""Planner: spacing, axis order, topology, cascade, memory fitting, determinism, CLI, and the real datasets' plans."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from model_helpers import as_configuration, tiny_configuration

from autoseg.cli import main
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import UserError
from autoseg.fingerprint import compute_fingerprint
from autoseg.fingerprint.synthetic import synthetic_fingerprint
from autoseg.networks import build_network
from autoseg.planning import plan_experiment
from autoseg.planning.memory_model import estimate_training_memory, parameter_count
from autoseg.planning.table import configuration_rows
from autoseg.planning.target_spacing import target_spacing
from autoseg.records.configuration_parts import Network
from autoseg.records.plans import Plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import dumps_json, read_json


def _plan(spacing, shape, **options) -> dict:
    fingerprint, dataset = synthetic_fingerprint(
        name=options.pop("name", "synthetic"), spacing=spacing, shape=shape,
        channel_names=options.pop("channel_names", ("MRI",)), num_cases=options.pop("num_cases", 20),
        relative_variation=options.pop("relative_variation", 0.1),
    )
    return plan_experiment(fingerprint, dataset, **options).to_json()


def resolve_configuration(plans: dict, name: str) -> dict:
    """One configuration of a plans.json mapping, with its parents merged in, as JSON."""
    return Plans.from_json(plans).configuration(name).to_json()


def test_anisotropic_data_pools_in_plane_first_with_flat_kernels() -> None:
    plans = _plan([3.0, 0.8, 0.8], [60, 400, 400])
    fullres = resolve_configuration(plans, "3d_fullres")
    network = fullres["network"]
    assert plans["transpose_forward"] == [0, 1, 2]
    assert network["kernel_sizes"][0] == [1, 3, 3]  # no blurring across 3 mm slices at full resolution
    assert network["strides"][1] == [1, 2, 2]  # first downsampling is in-plane only
    assert all(stride[0] == 1 for stride in network["strides"][:2])
    assert network["strides"][2] == [2, 2, 2]  # once spacings have met, all axes pool together
    assert fullres["resampling"]["anisotropic"] is True
    assert resolve_configuration(plans, "2d")["resampling"]["anisotropic"] is True  # same volumes, same resampling
    assert fullres["patch_size"][0] < fullres["patch_size"][1]  # the patch is roughly cubic in millimetres


def test_coarse_axis_is_moved_first() -> None:
    plans = _plan([0.8, 0.8, 3.0], [400, 400, 60])
    assert plans["transpose_forward"] == [2, 0, 1]
    assert plans["transpose_backward"] == [1, 2, 0]
    fullres = resolve_configuration(plans, "3d_fullres")
    assert fullres["spacing"][0] == max(fullres["spacing"])
    assert fullres["network"]["kernel_sizes"][0] == [1, 3, 3]


def test_thick_slice_axis_uses_tenth_percentile_spacing() -> None:
    spacings = [[5.0, 0.7, 0.7]] * 8 + [[1.5, 0.7, 0.7]] * 2
    shapes = [[20, 512, 512]] * 10
    assert target_spacing(spacings, shapes, is_2d=False)[0] == pytest.approx(1.5)
    # Not thin along the coarse axis (few slices is what triggers the rule): the median stays.
    assert target_spacing(spacings, [[400, 512, 512]] * 10, is_2d=False)[0] == pytest.approx(5.0)


def test_large_images_get_a_lowres_cascade() -> None:
    plans = _plan([1.0, 0.8, 0.8], [300, 512, 512])
    assert list(plans["configurations"]) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    lowres_entry = plans["configurations"]["3d_lowres"]
    cascade_entry = plans["configurations"]["3d_cascade_fullres"]
    assert lowres_entry["inherits_from"] == "3d_fullres"
    assert cascade_entry == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    fullres = resolve_configuration(plans, "3d_fullres")
    lowres = resolve_configuration(plans, "3d_lowres")
    cascade = resolve_configuration(plans, "3d_cascade_fullres")
    # The reference's batch Dice: pooled over the batch in 3d_fullres and the cascade when a cascade exists.
    assert (fullres["batch_dice"], lowres["batch_dice"], cascade["batch_dice"]) == (True, False, True)
    assert "inherits_from" not in cascade and cascade["patch_size"] == fullres["patch_size"]
    assert math.prod(fullres["patch_size"]) / math.prod(fullres["median_shape"]) < 0.25
    assert all(low > full for low, full in zip(lowres["spacing"], fullres["spacing"], strict=True))
    assert math.prod(lowres["patch_size"]) / math.prod(lowres["median_shape"]) >= 0.25
    assert math.prod(fullres["median_shape"]) / math.prod(lowres["median_shape"]) >= 2


def test_small_images_get_no_cascade_and_2d_data_only_2d() -> None:
    small = _plan([1.0, 1.0, 1.0], [40, 50, 40])
    assert list(small["configurations"]) == ["2d", "3d_fullres"]
    assert resolve_configuration(small, "3d_fullres")["batch_dice"] is False  # no cascade: per-sample Dice
    plans = _plan([1.0, 0.2, 0.2], [1, 500, 700])
    assert list(plans["configurations"]) == ["2d"]
    assert plans["transpose_forward"] == [0, 1, 2]


@pytest.mark.parametrize("preset", ["default", "resenc-m"])
def test_patch_never_grows_when_the_budget_shrinks(preset: str) -> None:
    budgets = [40, 24, 16, 12, 8, 6, 4, 3, 2, 1, 0.5]
    for spacing, shape in (([1.0, 0.8, 0.8], [300, 512, 512]), ([3.0, 0.8, 0.8], [60, 400, 400]),
                           ([1.0, 0.13, 0.13], [1, 540, 780])):
        previous: dict[str, list[int]] = {}
        for budget in budgets:
            plans = _plan(spacing, shape, gpu_memory_gb=budget, preset=preset)
            for name in plans["configurations"]:
                configuration = resolve_configuration(plans, name)
                patch = configuration["patch_size"]
                if name in previous:
                    assert math.prod(patch) <= math.prod(previous[name]), (spacing, name, budget)
                    if name != "3d_lowres":  # lowres changes its spacing with the budget: only its volume is monotone
                        assert all(a <= b for a, b in zip(patch, previous[name], strict=True)), (spacing, name, budget)
                previous[name] = patch
                if budget >= 2:  # large enough that the smallest patch is never reached
                    assert configuration["estimated_memory_gb"] <= budget
                assert configuration["batch_size"] >= 2


def test_batch_size_is_capped_by_the_dataset_size() -> None:
    plans = _plan([1.0, 1.0, 1.0], [32, 32, 32], num_cases=4)
    fullres = resolve_configuration(plans, "3d_fullres")
    assert fullres["batch_size"] == 2  # 5 % of 4 small images is less than one patch: the floor of 2 applies
    network = Network.from_json(fullres["network"])
    estimate = estimate_training_memory(network, fullres["patch_size"], in_channels=1, out_channels=2)
    assert estimate.largest_batch(8 * 1024**3) > 2  # memory alone would have allowed far more


def test_presets_choose_network_and_budget() -> None:
    plans = _plan([1.0, 1.0, 1.0], [128, 128, 128], preset="resenc-l")
    assert plans["gpu_memory_gb"] == 24
    network = resolve_configuration(plans, "3d_fullres")["network"]
    assert network["architecture"] == "resenc_unet"
    assert network["blocks_per_stage_encoder"][:4] == [1, 3, 4, 6]
    assert set(network["convs_per_stage_decoder"]) == {1}
    default = resolve_configuration(_plan([1.0, 1.0, 1.0], [128, 128, 128]), "3d_fullres")
    assert default["network"]["architecture"] == "plain_unet"
    assert math.prod(resolve_configuration(plans, "3d_fullres")["patch_size"]) >= math.prod(default["patch_size"])


def test_normalisation_follows_channel_names() -> None:
    plans = _plan([1.0, 1.0, 1.0], [40, 40, 40], channel_names=("CT", "MRI", "noNorm"))
    ct, mri, none = resolve_configuration(plans, "3d_fullres")["normalization"]
    assert ct == {"scheme": "ct", "clip_low": 40.0, "clip_high": 160.0, "mean": 100.0, "std": 20.0}
    assert mri == {"scheme": "zscore", "use_mask": False}
    assert none == {"scheme": "none"}


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
def test_memory_model_counts_the_parameters_of_the_real_network(architecture: str) -> None:
    plans = _plan([3.0, 0.8, 0.8], [60, 400, 400], preset="default" if architecture == "plain_unet" else "resenc-m")
    configuration = resolve_configuration(plans, "3d_fullres")
    network = build_network(Plans.from_json(plans).configuration("3d_fullres"), in_channels=2, out_channels=4)
    expected = sum(p.numel() for p in network.parameters())
    assert parameter_count(Network.from_json(configuration["network"]), in_channels=2, out_channels=4) == expected


def test_hand_edited_network_normalisation_and_resampling_are_written_back_as_they_were() -> None:
    """Typed parts keep unknown keys, leave absent keys out and keep the key order: plans.json round-trips exactly."""
    plans = _plan([1.0, 1.0, 1.0], [40, 40, 40], channel_names=("CT",))
    configuration = plans["configurations"]["3d_fullres"]
    configuration["network"] = {"note": "mine", **{k: v for k, v in configuration["network"].items()
                                                   if k != "architecture"}}
    configuration["resampling"] = {"label_order": 0, "my_key": [1, 2]}
    configuration["normalization"] = [{"std": 20.0, "scheme": "ct", "clip_low": 40.0, "clip_high": 160.0,
                                       "mean": 100.0, "comment": "edited"}]
    read = Plans.from_json(plans)
    assert dumps_json(read.to_json()) == dumps_json(plans)
    typed = read.configuration("3d_fullres")
    assert typed.network.architecture == "plain_unet" and typed.network.extra == {"note": "mine"}
    assert (typed.resampling.image_order, typed.resampling.label_order, typed.resampling.coarse_axis_order) == (3, 0, 0)
    assert typed.normalization[0].scheme == "ct" and typed.normalization[0].clip_high == 160.0
    edited = typed.network.replace(architecture="resenc_unet").to_json()
    assert list(edited)[:2] == ["note", "features_per_stage"] and edited["architecture"] == "resenc_unet"


def test_resolve_configuration_errors() -> None:
    with pytest.raises(UserError, match="inherits from itself"):
        Plans.from_json({"configurations": {"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}})
    with pytest.raises(UserError, match="unknown 'x'"):
        Plans.from_json({"configurations": {"c": {"inherits_from": "x"}}})
    with pytest.raises(UserError, match="not in the plans"):
        Plans.from_json({"configurations": {}}).configuration("3d_fullres")


def _write_small_dataset(root: Path) -> None:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    generator = np.random.default_rng(0)
    for index in range(4):
        image = generator.normal(100, 10, (16, 32, 24)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[4:10, 8:20, 6:16] = 1
        for array, path in ((image, root / "imagesTr" / f"c{index}_0000.nii.gz"),
                            (label, root / "labelsTr" / f"c{index}.nii.gz")):
            written = sitk.GetImageFromArray(array)
            written.SetSpacing((0.9, 0.9, 2.5))
            sitk.WriteImage(written, str(path))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 4,
        "file_ending": ".nii.gz"}))


def test_cli_writes_byte_identical_plans_and_shows_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "Dataset950_Small"
    _write_small_dataset(raw)
    arguments = ["plan", str(raw), "--work-dir", str(tmp_path / "work"), "--workers", "1"]
    assert main(arguments) == 0
    work = tmp_path / "work" / "Dataset950_Small"
    first = (work / "plans.json").read_bytes()
    assert (work / "dataset.json").is_file() and (work / "fingerprint.json").is_file()
    assert main([*arguments, "--recompute-fingerprint"]) == 0
    assert (work / "plans.json").read_bytes() == first
    plans = read_json(work / "plans.json")
    assert plans["configurations"]["3d_fullres"]["spacing"] == pytest.approx([2.5, 0.9, 0.9])
    capsys.readouterr()
    assert main(["plan", str(raw), "--work-dir", str(tmp_path / "work"), "--show"]) == 0
    shown = capsys.readouterr().out
    assert "[3d_fullres]" in shown and "patch" in shown and "16 x 32 x 24" in shown
    assert main(["plan", str(raw), "--work-dir", str(tmp_path / "work"), "--gpu-memory", "0"]) == 2
    assert "--gpu-memory must be positive" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "work"), "--show"]) == 2


@pytest.fixture(scope="module")
def real_plans(tmp_path_factory: pytest.TempPathFactory, hippocampus_root: Path, hc18_root: Path) -> dict:
    work = tmp_path_factory.mktemp("real")
    result = {}
    for key, root in (("hippocampus", hippocampus_root), ("hc18", hc18_root)):
        dataset = load_raw_dataset(root)
        fingerprint = compute_fingerprint(dataset, WorkFolder.for_dataset(work, root), workers=2)
        plans = plan_experiment(fingerprint, dataset).to_json()
        assert dumps_json(plans) == dumps_json(plan_experiment(fingerprint, dataset).to_json())  # deterministic
        result[key] = (plans, fingerprint)
    return result


def test_real_hippocampus_plan(real_plans: dict) -> None:
    plans, _ = real_plans["hippocampus"]
    assert list(plans["configurations"]) == ["2d", "3d_fullres"]  # small images: no cascade
    fullres = resolve_configuration(plans, "3d_fullres")
    assert fullres["spacing"] == [1.0, 1.0, 1.0]
    assert fullres["patch_size"] == [40, 56, 40]  # the median image 35.5 x 51 x 35, rounded up to 8-multiples
    assert fullres["network"]["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert fullres["batch_size"] == 7  # round(5 % of the dataset voxels / patch voxels), as nnU-Net v2
    assert fullres["normalization"] == [{"scheme": "zscore", "use_mask": False}]
    two_d = resolve_configuration(plans, "2d")
    assert two_d["patch_size"] == [56, 40] and two_d["batch_size"] == 279  # nnU-Net v2: 283 (see docs/planning.md)


def test_real_hc18_plan_respects_pixel_sizes(real_plans: dict) -> None:
    plans, fingerprint = real_plans["hc18"]
    assert list(plans["configurations"]) == ["2d"]
    two_d = resolve_configuration(plans, "2d")
    pixel_sizes = [case.spacing[1] for case in fingerprint.cases.values()]
    assert two_d["spacing"][1:] == [pytest.approx(float(np.median(pixel_sizes)))] * 2
    assert 0.1 < two_d["spacing"][1] < 0.2  # not the nominal 1 mm of the slice axis
    # The median head image (~540 x 780 pixels at ~0.13 mm) fits in one patch.
    assert all(p >= m for p, m in zip(two_d["patch_size"], two_d["median_shape"][1:], strict=True))
    assert len(two_d["network"]["strides"]) >= 7
    assert two_d["batch_size"] >= 2 and two_d["estimated_memory_gb"] <= 8


@pytest.mark.slow
def test_memory_estimate_bounds_a_real_cpu_training_step(real_plans: dict) -> None:
    """One real float32 training step of a planned network stays within budget and within 20 % of the estimate."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_model.py"
    spec = importlib.util.spec_from_file_location("memory_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    plans = [p for p in benchmark.benchmark_plans(precision="float32", budgets=[0.6], quick=True)
             if p["name"].startswith(("hippocampus/3d_fullres", "hc18/2d"))]
    assert len(plans) == 2
    for plan in plans:
        result = benchmark.measure_in_subprocess(plan, steps=2)
        assert "error" not in result, result
        assert result["measured_gb"] <= plan["budget_gb"], plan["name"]
        assert 1.0 <= plan["predicted_gb"] / result["measured_gb"] <= 1.2, (plan["name"], result)


def test_a_hand_written_plan_without_a_memory_estimate_still_prints() -> None:
    configuration = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    assert "estimated_memory_gb" not in configuration
    rows = dict(configuration_rows(as_configuration(configuration)))
    assert rows["patch"] == "24 x 32 x 24" and "est. memory" not in rows
