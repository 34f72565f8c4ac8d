"""The throughput model: counted work per training step, a fit that recovers known costs, and a per-machine cache."""

from __future__ import annotations

import math

import pytest

from autoseg.pipeline import machine_benchmark as measuring
from autoseg.planning.step_cost import (
    DATA_TERMS,
    STEP_TERMS,
    ProbeMeasurement,
    StepWork,
    ThroughputModel,
    convolution_layers,
    count_training_flops,
    fit_throughput_model,
    step_work,
)
from autoseg.records.plans import Configuration


def _configuration(network: dict, patch_size: tuple[int, ...], batch_size: int = 2) -> Configuration:
    dimension = len(patch_size)
    return Configuration(name="test", dimension=dimension, spacing=(1.0,) * dimension, patch_size=patch_size,
                         batch_size=batch_size, network=network, normalization=(), resampling={})


def _two_stage_network(dimension: int, features: tuple[int, int]) -> dict:
    return {
        "architecture": "plain_unet",
        "features_per_stage": list(features),
        "kernel_sizes": [[3] * dimension, [3] * dimension],
        "strides": [[1] * dimension, [2] * dimension],
        "blocks_per_stage_encoder": [1, 1],
        "convs_per_stage_decoder": [1],
    }


def test_a_small_3d_network_has_the_flops_counted_by_hand() -> None:
    """Convolution, strided convolution, transposed convolution, decoder convolution and head, each 2 FLOPs per
    multiply-add forward; backward computes input and weight gradients (2x forward), except the first convolution,
    whose input needs no gradient (1x)."""
    in_channels, out_channels, first, second, batch = 1, 3, 8, 16, 2
    patch = (16, 16, 16)
    full, half = math.prod(patch), math.prod(patch) // 8
    forward = {
        "first": 2 * in_channels * first * 27 * full,
        "strided": 2 * first * second * 27 * half,
        "transposed": 2 * second * first * 8 * half,
        "decoder": 2 * (2 * first) * first * 27 * full,
        "head": 2 * first * out_channels * full,
    }
    expected = batch * (forward["first"] * 2 + sum(value * 3 for name, value in forward.items() if name != "first"))
    configuration = _configuration(_two_stage_network(3, (first, second)), patch, batch)
    counted = count_training_flops(configuration, batch_size=batch, in_channels=in_channels, out_channels=out_channels)
    assert counted == pytest.approx(expected, rel=0.01)
    work = step_work(configuration, batch_size=batch, in_channels=in_channels, out_channels=out_channels)
    assert work.flops == pytest.approx(expected, rel=0.01)
    assert work.input_voxels == batch * full and work.dimension == 3


def test_doubling_the_batch_doubles_the_work_of_a_step() -> None:
    configuration = _configuration(_two_stage_network(2, (16, 32)), (64, 48))
    single = step_work(configuration, batch_size=2, in_channels=1, out_channels=2)
    double = step_work(configuration, batch_size=4, in_channels=1, out_channels=2)
    assert double.flops == pytest.approx(2 * single.flops)
    assert double.activation_elements == pytest.approx(2 * single.activation_elements)
    assert double.input_voxels == 2 * single.input_voxels
    # The per-sample count step_work scales is what counting the whole batch gives.
    assert double.flops == pytest.approx(count_training_flops(configuration, batch_size=4, in_channels=1,
                                                              out_channels=2))


def test_a_step_counts_every_convolution_once_whatever_the_batch_and_patch() -> None:
    network = {**_two_stage_network(3, (16, 32)), "features_per_stage": [16, 32, 64, 128],
               "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
               "blocks_per_stage_encoder": [2, 2, 2, 2], "convs_per_stage_decoder": [2, 2, 2]}
    small = step_work(_configuration(network, (32, 32, 32)), batch_size=1, in_channels=1, out_channels=3)
    large = step_work(_configuration(network, (48, 64, 48)), batch_size=4, in_channels=2, out_channels=5)
    # 8 encoder convolutions, 3 transposed convolutions and 6 convolutions in the decoder, 3 deep-supervision heads.
    assert small.layers == large.layers == 8 + 3 + 6 + 3
    assert convolution_layers(_configuration(network, (32, 32, 32))) == 20


def test_fresh_pages_are_counted_only_for_tensors_of_32_mib_and_more() -> None:
    """The decoder's concatenated skip (32 channels of 256x512) is 16 MiB per sample: at batch 2 it and its gradient
    reach 32 MiB, the size from which glibc hands out fresh pages on every allocation."""
    configuration = _configuration(_two_stage_network(2, (16, 32)), (256, 512))
    assert step_work(configuration, batch_size=1, in_channels=1, out_channels=2).fresh_page_bytes == 0
    large = step_work(configuration, batch_size=2, in_channels=1, out_channels=2).fresh_page_bytes
    assert large >= 2 * 32 * 2**20


def test_a_bfloat16_step_allocates_half_the_bytes_and_only_what_stays_large_gets_fresh_pages() -> None:
    """Under bfloat16 autocast every tensor of the network is half as large: the 32 MiB skip of a batch of 2 drops
    below the threshold, and a batch of 4 brings it back at the float32 batch of 2's size."""
    configuration = _configuration(_two_stage_network(2, (16, 32)), (256, 512))
    small = step_work(configuration, batch_size=2, in_channels=1, out_channels=2, precision="bfloat16")
    assert small.fresh_page_bytes == 0
    float32 = step_work(configuration, batch_size=2, in_channels=1, out_channels=2, precision="float32")
    bfloat16 = step_work(configuration, batch_size=4, in_channels=1, out_channels=2, precision="bfloat16")
    assert bfloat16.fresh_page_bytes == pytest.approx(float32.fresh_page_bytes, rel=0.05)
    assert bfloat16.flops == pytest.approx(2 * float32.flops)  # the arithmetic does not depend on the precision


def _probe(
    name: str, dimension: int, flops: float, activations: float, voxels: float, fresh: float, layers: int,
    truth: dict,
) -> ProbeMeasurement:
    work = StepWork(flops=flops, activation_elements=activations, input_voxels=voxels, dimension=dimension,
                    fresh_page_bytes=fresh, layers=layers)
    step = sum(truth["step"][term] * value for term, value in zip(STEP_TERMS, work.terms(), strict=True))
    data = sum(truth["data"][term] * value for term, value in zip(DATA_TERMS, work.data_terms(), strict=True))
    return ProbeMeasurement(name, work, step, data)


TRUTH = {
    "step": {"seconds_per_gflop": 0.012, "seconds_per_million_activations": 0.004,
             "seconds_per_million_input_voxels": 0.5, "seconds_per_step": 0.08, "seconds_per_layer": 0.002,
             "seconds_per_gigabyte_fresh_pages": 0.3},
    "data": {"seconds_per_million_input_voxels": 0.2, "seconds_per_batch": 0.01},
}


def _synthetic_probes() -> list[ProbeMeasurement]:
    shapes = [(84e9, 31e6, 0.066e6, 0.0, 20), (168e9, 62e6, 0.131e6, 1.2e9, 20), (197e9, 80e6, 0.154e6, 0.0, 26),
              (128e9, 37e6, 0.066e6, 0.0, 41), (66e9, 25e6, 0.049e6, 0.0, 26), (40e9, 30e6, 0.2e6, 0.4e9, 32)]
    return [_probe(f"probe {index}", dimension, *shape, TRUTH) for dimension in (2, 3)
            for index, shape in enumerate(shapes)]


def test_the_non_negative_fit_recovers_known_coefficients() -> None:
    model = fit_throughput_model(_synthetic_probes(), key={"machine": "test"}, data_overlaps_step=False,
                                 data_workers=2, peak_conv_flops_per_second={"2": 1e11, "3": 1e11},
                                 fresh_page_seconds_per_gigabyte=0.3)  # measured directly, not fitted
    for dimension in ("2", "3"):
        for term, value in TRUTH["step"].items():
            assert model.step_coefficients[dimension][term] == pytest.approx(value, rel=1e-6), term
        for term, value in TRUTH["data"].items():
            assert model.data_coefficients[dimension][term] == pytest.approx(value, rel=1e-6), term
    work = StepWork(flops=800e9, activation_elements=300e6, input_voxels=0.63e6, dimension=3, fresh_page_bytes=5e9,
                    layers=44)
    step = 0.012 * 800 + 0.004 * 300 + 0.5 * 0.63 + 0.08 + 0.002 * 44 + 0.3 * 5
    data = 0.2 * 0.63 + 0.01
    assert model.seconds_per_iteration(work) == pytest.approx(step + data)  # CPU: augmented in line
    overlapped = ThroughputModel.from_json({**model.to_json(), "data_overlaps_step": True})
    assert overlapped.seconds_per_iteration(work) == pytest.approx(max(step, data / 2))  # GPU: workers run alongside


def test_a_model_reads_back_from_json_unchanged() -> None:
    model = fit_throughput_model(_synthetic_probes(), key={"machine": "test", "threads": 2},
                                 data_overlaps_step=False, data_workers=2,
                                 peak_conv_flops_per_second={"2": 9e10, "3": 1.1e11}, measurement_seconds=41.0)
    again = ThroughputModel.from_json(model.to_json())
    assert again == model
    assert again.key_hash == model.key_hash


def test_the_cached_model_is_reused_for_the_same_key_and_measured_again_for_another(monkeypatch, tmp_path) -> None:
    measured: list[tuple[str, str, int | None]] = []

    def fake_measure(device, precision, *, threads=None, say=print) -> ThroughputModel:
        measured.append((str(device), precision, threads))
        return fit_throughput_model(
            _synthetic_probes(), key=measuring.throughput_key(device, precision, threads=threads),
            data_overlaps_step=False, data_workers=2, peak_conv_flops_per_second={"2": 1e11, "3": 1e11},
        )

    monkeypatch.setattr(measuring, "measure_throughput", fake_measure)
    first = measuring.machine_throughput("cpu", "float32", threads=2, cache_folder=tmp_path, say=lambda _: None)
    again = measuring.machine_throughput("cpu", "float32", threads=2, cache_folder=tmp_path, say=lambda _: None)
    assert measured == [("cpu", "float32", 2)] and again == first
    assert (tmp_path / f"{first.key_hash}.json").is_file()
    other = measuring.machine_throughput("cpu", "float32", threads=1, cache_folder=tmp_path, say=lambda _: None)
    assert measured == [("cpu", "float32", 2), ("cpu", "float32", 1)] and other.key["threads"] == 1
    assert len(list(tmp_path.glob("*.json"))) == 2
    (tmp_path / f"{first.key_hash}.json").write_text("{cut short", encoding="utf-8")  # a damaged cache is redone
    measuring.machine_throughput("cpu", "float32", threads=2, cache_folder=tmp_path, say=lambda _: None)
    assert len(measured) == 3


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert measuring.default_cache_folder() == tmp_path / "autoseg" / "throughput"
