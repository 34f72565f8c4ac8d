"""Residual-encoder stage: basic residual blocks (two convolutions and an identity or projected shortcut)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.networks.layers import (
    LEAKY_RELU_SLOPE,
    ConvolutionNormActivation,
    average_pool_class,
    convolution_class,
    instance_norm_class,
)


class ResidualBlock(nn.Module):
    """``y = LeakyReLU(F(x) + shortcut(x))`` with ``F = conv-norm-act -> conv-norm``.

    When the block downsamples or changes the width, the shortcut average-pools by the stride and then applies a
    1x1 convolution + norm ("ResNet-D" shortcut): pooling first keeps every input voxel contributing, unlike a
    strided 1x1 convolution that would skip three quarters (2D) or seven eighths (3D) of them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dimension: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            ConvolutionNormActivation(
                in_channels, out_channels, dimension=dimension, kernel_size=kernel_size, stride=stride
            ),
            ConvolutionNormActivation(
                out_channels,
                out_channels,
                dimension=dimension,
                kernel_size=kernel_size,
                stride=[1] * dimension,
                activation=False,
            ),
        )
        shortcut: list[nn.Module] = []
        if any(step != 1 for step in stride):
            shortcut.append(average_pool_class(dimension)(kernel_size=tuple(stride), stride=tuple(stride)))
        if in_channels != out_channels:
            shortcut.append(convolution_class(dimension)(in_channels, out_channels, kernel_size=1, bias=False))
            shortcut.append(instance_norm_class(dimension)(out_channels, eps=1e-5, affine=True))
        self.shortcut = nn.Sequential(*shortcut)
        self.activation = nn.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.residual(features) + self.shortcut(features))


def residual_stage(
    in_channels: int,
    out_channels: int,
    *,
    dimension: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    number_of_blocks: int,
) -> nn.Sequential:
    """``number_of_blocks`` residual blocks; the first one strides and widens."""
    if number_of_blocks < 1:
        raise ValueError("a residual stage needs at least one block")
    blocks = [
        ResidualBlock(
            in_channels if index == 0 else out_channels,
            out_channels,
            dimension=dimension,
            kernel_size=kernel_size,
            stride=stride if index == 0 else [1] * dimension,
        )
        for index in range(number_of_blocks)
    ]
    return nn.Sequential(*blocks)
