"""Dimension-agnostic layer lookup and the convolution -> instance norm -> leaky ReLU unit every stage is made of."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

LEAKY_RELU_SLOPE = 1e-2


def convolution_class(dimension: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _by_dimension(dimension, nn.Conv2d, nn.Conv3d)


def transposed_convolution_class(dimension: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _by_dimension(dimension, nn.ConvTranspose2d, nn.ConvTranspose3d)


def instance_norm_class(dimension: int) -> type[nn.Module]:
    """``nn.InstanceNorm2d`` or ``nn.InstanceNorm3d``."""
    return _by_dimension(dimension, nn.InstanceNorm2d, nn.InstanceNorm3d)


def average_pool_class(dimension: int) -> type[nn.Module]:
    """``nn.AvgPool2d`` or ``nn.AvgPool3d``."""
    return _by_dimension(dimension, nn.AvgPool2d, nn.AvgPool3d)


def _by_dimension(dimension: int, two_d: type[nn.Module], three_d: type[nn.Module]) -> type[nn.Module]:
    if dimension == 2:
        return two_d
    if dimension == 3:
        return three_d
    raise ValueError(f"networks support dimension 2 or 3, not {dimension}")


def same_padding(kernel_size: Sequence[int]) -> list[int]:
    """Padding that keeps the size of an odd kernel's output equal to its input (before striding)."""
    return [size // 2 for size in kernel_size]


class ConvolutionNormActivation(nn.Sequential):
    """``conv(kernel, stride) -> InstanceNorm(affine) -> LeakyReLU(0.01)``.

    The convolution has no bias: the instance norm subtracts the per-channel mean right after, which would cancel it.
    ``activation=False`` leaves the activation out (the last unit of a residual branch is activated after the sum).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dimension: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            convolution_class(dimension)(
                in_channels,
                out_channels,
                kernel_size=tuple(kernel_size),
                stride=tuple(stride),
                padding=tuple(same_padding(kernel_size)),
                bias=False,
            ),
            instance_norm_class(dimension)(out_channels, eps=1e-5, affine=True),
        ]
        if activation:
            layers.append(nn.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, inplace=True))
        super().__init__(*layers)
