"""U-Nets built from plan configurations: shapes, deep supervision, anisotropy, gradients, weights-only saving."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.networks import ARCHITECTURES, build_network, count_parameters, describe
from autoseg.records.plans import Configuration
from autoseg.training.data_loading import deep_supervision_scales
from autoseg.utils.files import atomic_torch_save


def configuration(
    *,
    dimension: int,
    features: list[int],
    kernels: list[list[int]],
    strides: list[list[int]],
    architecture: str = "plain_unet",
    blocks: list[int] | None = None,
) -> Configuration:
    """A configuration with only the network filled in: the patch comes with each test's input."""
    return Configuration(
        name="test", dimension=dimension, spacing=(1.0,) * dimension, patch_size=(), batch_size=1,
        network={
            "architecture": architecture,
            "features_per_stage": features,
            "kernel_sizes": kernels,
            "strides": strides,
            "blocks_per_stage_encoder": blocks or [2] * len(features),
            "convs_per_stage_decoder": [2] * (len(features) - 1),
        },
        normalization=(), resampling={},
    )


def expected_output_shapes(config: Configuration, patch: list[int], batch: int, classes: int) -> list[tuple[int, ...]]:
    return [
        (batch, classes, *[round(size * factor) for size, factor in zip(patch, scale, strict=True)])
        for scale in deep_supervision_scales(config)
    ]


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
def test_3d_deep_supervision_outputs_match_the_downsampled_targets(architecture: str) -> None:
    config = configuration(
        dimension=3,
        features=[4, 8, 16, 16],
        kernels=[[3, 3, 3]] * 4,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        architecture=architecture,
        blocks=[1, 2, 2, 2] if architecture == "resenc_unet" else None,
    )
    network = build_network(config, in_channels=2, out_channels=3)
    patch = [16, 24, 16]
    outputs = network(torch.randn(2, 2, *patch))
    assert isinstance(outputs, list)
    assert [tuple(output.shape) for output in outputs] == expected_output_shapes(config, patch, 2, 3)
    assert [tuple(output.shape) for output in outputs] == [(2, 3, 16, 24, 16), (2, 3, 8, 12, 8), (2, 3, 4, 6, 4)]


def test_2d_network_with_five_stages_and_non_square_patch() -> None:
    config = configuration(
        dimension=2,
        features=[4, 8, 16, 32, 32],
        kernels=[[3, 3]] * 5,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
    )
    network = build_network(config, in_channels=1, out_channels=2)
    outputs = network(torch.randn(3, 1, 32, 48))
    assert [tuple(output.shape) for output in outputs] == expected_output_shapes(config, [32, 48], 3, 2)
    assert len(outputs) == 4


def test_anisotropic_kernels_and_strides_keep_the_coarse_axis() -> None:
    # Thick slices: no pooling and 1-wide kernels along axis 0 in the first stages, as the planner chooses.
    config = configuration(
        dimension=3,
        features=[4, 8, 16],
        kernels=[[1, 3, 3], [1, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    )
    network = build_network(config, in_channels=1, out_channels=2)
    first_convolution = network.encoder_stages[0][0][0]
    assert first_convolution.kernel_size == (1, 3, 3)
    assert network.encoder_stages[1][0][0].stride == (1, 2, 2)
    patch = [6, 16, 20]
    outputs = network(torch.randn(1, 1, *patch))
    assert [tuple(output.shape) for output in outputs] == [(1, 2, 6, 16, 20), (1, 2, 6, 8, 10)]
    assert deep_supervision_scales(config) == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]


def test_inference_mode_returns_one_full_resolution_tensor() -> None:
    config = configuration(dimension=2, features=[4, 8, 8], kernels=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]])
    network = build_network(config, in_channels=1, out_channels=3)
    image = torch.randn(1, 1, 16, 16)
    network.eval()
    with torch.no_grad():
        evaluated = network(image)
    assert isinstance(evaluated, torch.Tensor) and evaluated.shape == (1, 3, 16, 16)
    network.train()
    network.set_deep_supervision(False)
    assert isinstance(network(image), torch.Tensor)
    network.set_deep_supervision(True)
    assert isinstance(network(image), list)
    # The full-resolution output is the same computation with or without deep supervision.
    network.eval()
    with torch.no_grad():
        assert torch.allclose(network(image), evaluated)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_gradients_reach_every_parameter(architecture: str) -> None:
    config = configuration(
        dimension=3,
        features=[4, 8, 8],
        kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        architecture=architecture,
        blocks=[1, 2, 2],
    )
    network = build_network(config, in_channels=1, out_channels=2)
    outputs = network(torch.randn(2, 1, 4, 16, 16))
    sum(output.square().mean() for output in outputs).backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_residual_encoder_is_deeper_and_described_with_its_parameter_count() -> None:
    plain = configuration(
        dimension=3, features=[8, 16, 32], kernels=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    )
    residual_description = plain.network.replace(architecture="resenc_unet", blocks_per_stage_encoder=(1, 3, 4))
    residual = plain.replace(network=residual_description)
    plain_network = build_network(plain, in_channels=1, out_channels=2)
    residual_network = build_network(residual, in_channels=1, out_channels=2)
    assert count_parameters(residual_network) > count_parameters(plain_network)
    summary = describe(residual_network)
    assert "resenc_unet 3D" in summary and "3 stages" in summary
    parameters = count_parameters(residual_network)
    assert f"{parameters / 1000:.1f} k parameters" in summary or f"{parameters / 1e6:.2f} M parameters" in summary
    assert "\n" not in summary


def test_he_initialisation_scales_weights_by_fan_in() -> None:
    config = configuration(dimension=3, features=[32, 64], kernels=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]])
    network = build_network(config, in_channels=1, out_channels=2)
    weight = network.encoder_stages[1][1][0].weight  # 64 x 64 x 3x3x3 convolution
    fan_in = 64 * 27
    expected_std = math.sqrt(2 / (1 + 0.01**2) / fan_in)
    assert abs(weight.std().item() - expected_std) / expected_std < 0.05


def test_weights_only_state_dict_round_trip(tmp_path) -> None:
    config = configuration(dimension=2, features=[4, 8], kernels=[[3, 3]] * 2, strides=[[1, 1], [2, 2]])
    network = build_network(config, in_channels=1, out_channels=2)
    atomic_torch_save(network.state_dict(), tmp_path / "weights.pt")
    restored = build_network(config, in_channels=1, out_channels=2)
    restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    restored.eval()
    network.eval()
    image = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(network(image), restored(image))


def test_inconsistent_network_descriptions_are_refused() -> None:
    config = configuration(dimension=3, features=[4, 8], kernels=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]])
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(
            config.replace(network=config.network.replace(architecture="vnet")), in_channels=1, out_channels=2
        )
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_network(
            config.replace(network=config.network.replace(kernel_sizes=((3, 3, 3),))), in_channels=1, out_channels=2
        )
    with pytest.raises(ValueError, match="3 axes"):
        build_network(
            config.replace(network=config.network.replace(strides=((1, 1), (2, 2)))), in_channels=1, out_channels=2
        )
