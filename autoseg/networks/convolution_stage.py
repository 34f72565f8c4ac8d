"""Plain U-Net encoder stage: a stack of convolution units, the first one strided to downsample."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autoseg.networks.layers import ConvolutionNormActivation


def plain_convolution_stage(
    in_channels: int,
    out_channels: int,
    *,
    dimension: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    number_of_convolutions: int,
) -> nn.Sequential:
    """``number_of_convolutions`` units; downsampling by a strided first convolution, not pooling (as the reference)."""
    if number_of_convolutions < 1:
        raise ValueError("a convolution stage needs at least one convolution")
    units = [
        ConvolutionNormActivation(
            in_channels if index == 0 else out_channels,
            out_channels,
            dimension=dimension,
            kernel_size=kernel_size,
            stride=stride if index == 0 else [1] * dimension,
        )
        for index in range(number_of_convolutions)
    ]
    return nn.Sequential(*units)
