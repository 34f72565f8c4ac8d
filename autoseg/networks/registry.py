"""Architectures by name, and ``build_network`` which turns a plan configuration into a ready, initialised module."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autoseg.networks.convolution_stage import plain_convolution_stage
from autoseg.networks.initialisation import he_initialise
from autoseg.networks.layers import ConvolutionNormActivation
from autoseg.networks.residual_stage import residual_stage
from autoseg.networks.unet import UNet
from autoseg.records.configuration_parts import Network
from autoseg.records.plans import Configuration


def build_plain_unet(
    network: Network, *, dimension: int, in_channels: int, out_channels: int, deep_supervision: bool
) -> UNet:
    """Encoder stage ``s`` = ``blocks_per_stage_encoder[s]`` convolution units, the first strided by ``strides[s]``."""
    features = network.features_per_stage
    stages = [
        plain_convolution_stage(
            in_channels if stage == 0 else features[stage - 1],
            features[stage],
            dimension=dimension,
            kernel_size=network.kernel_sizes[stage],
            stride=network.strides[stage],
            number_of_convolutions=int(network.blocks_per_stage_encoder[stage]),
        )
        for stage in range(len(features))
    ]
    return _unet_from_stages(
        stages,
        network,
        dimension=dimension,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        architecture="plain_unet",
    )


def build_residual_encoder_unet(
    network: Network, *, dimension: int, in_channels: int, out_channels: int, deep_supervision: bool
) -> UNet:
    """A stem convolution to ``features[0]`` channels, then ``blocks_per_stage_encoder[s]`` residual blocks per stage.

    The stem lets the first residual block have an identity shortcut; the decoder stays plain (as in the
    residual-encoder presets of the reference), since the encoder is where the extra capacity pays off.
    """
    features = network.features_per_stage
    stem = ConvolutionNormActivation(
        in_channels, features[0], dimension=dimension, kernel_size=network.kernel_sizes[0], stride=[1] * dimension
    )
    stages: list[nn.Module] = []
    for stage in range(len(features)):
        blocks = residual_stage(
            features[0] if stage == 0 else features[stage - 1],
            features[stage],
            dimension=dimension,
            kernel_size=network.kernel_sizes[stage],
            stride=network.strides[stage],
            number_of_blocks=int(network.blocks_per_stage_encoder[stage]),
        )
        stages.append(nn.Sequential(stem, blocks) if stage == 0 else blocks)
    return _unet_from_stages(
        stages,
        network,
        dimension=dimension,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        architecture="resenc_unet",
    )


def _unet_from_stages(
    stages: list[nn.Module],
    network: Network,
    *,
    dimension: int,
    out_channels: int,
    deep_supervision: bool,
    architecture: str,
) -> UNet:
    return UNet(
        stages,
        dimension=dimension,
        features_per_stage=network.features_per_stage,
        kernel_sizes=network.kernel_sizes,
        strides=network.strides,
        convolutions_per_decoder_stage=network.convs_per_stage_decoder,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        architecture=architecture,
    )


ArchitectureBuilder = Callable[..., UNet]

ARCHITECTURES: dict[str, ArchitectureBuilder] = {
    "plain_unet": build_plain_unet,
    "resenc_unet": build_residual_encoder_unet,
}


def _check_network_description(network: Network, dimension: int) -> None:
    features = network.features_per_stage
    stages = len(features)
    for key in ("kernel_sizes", "strides", "blocks_per_stage_encoder"):
        if len(getattr(network, key)) != stages:
            raise ValueError(f"network.{key} has {len(getattr(network, key))} entries but there are {stages} stages")
    for key in ("kernel_sizes", "strides"):
        for entry in getattr(network, key):
            if len(entry) != dimension:
                raise ValueError(f"network.{key} entry {entry} does not have {dimension} axes")
    for kernel in network.kernel_sizes:
        if any(size % 2 == 0 for size in kernel):
            raise ValueError(f"kernel sizes must be odd to keep the feature maps aligned, got {kernel}")


def build_network(
    configuration: Configuration, *, in_channels: int, out_channels: int, deep_supervision: bool = True
) -> nn.Module:
    """Build and He-initialise the network a resolved plan configuration describes.

    ``configuration.dimension`` (2 or 3) and ``configuration.network`` (architecture, features_per_stage,
    kernel_sizes, strides, blocks_per_stage_encoder, convs_per_stage_decoder) are read; see docs/design.md.
    Raises ``ValueError`` for an unknown architecture or inconsistent lists.

    Example:
        >>> configuration.patch_size, configuration.network.features_per_stage
        ((40, 56, 40), (4, 8, 16))
        >>> net = build_network(configuration, in_channels=1, out_channels=3)
        >>> [tuple(output.shape) for output in net(torch.zeros(1, 1, 40, 56, 40))]  # deep supervision: every scale
        [(1, 3, 40, 56, 40), (1, 3, 20, 28, 20)]
        >>> net.set_deep_supervision(False)
        >>> net(torch.zeros(1, 1, 40, 56, 40)).shape
        torch.Size([1, 3, 40, 56, 40])
    """
    dimension = configuration.dimension
    network = configuration.network
    name = network.architecture
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    _check_network_description(network, dimension)
    model = ARCHITECTURES[name](
        network,
        dimension=dimension,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
    )
    model.apply(he_initialise)
    return model
