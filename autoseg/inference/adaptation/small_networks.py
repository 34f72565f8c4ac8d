"""The small networks adaptation trains: normaliser, shape autoencoder, renderer and discriminators.

All are dimension-agnostic (2D or 3D convolutions, as the segmenter). The normaliser and the renderer are
residual around the identity with a zero-initialised last layer, so before any adaptation they change nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoseg.networks.layers import average_pool_class, convolution_class

LEAKY_SLOPE = 0.2


def _convolution(dimension: int, in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Module:
    return convolution_class(dimension)(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def _zero_last(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class InputNormaliser(nn.Module):
    """``x + g(x)`` with ``g`` three 3x3 convolutions (Karani et al. 2021): intensity remapping plus a little local
    filtering (denoising, sharpening); the identity at initialisation."""

    def __init__(self, channels: int, *, dimension: int, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _convolution(dimension, channels, width), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, width, width), nn.LeakyReLU(LEAKY_SLOPE),
            _zero_last(_convolution(dimension, width, channels)),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.layers(image)


class Renderer(nn.Module):
    """A shallow two-level U-Net ``x + r(x)`` that re-renders an image's appearance (Yang et al. 2018)."""

    def __init__(self, channels: int, *, dimension: int, width: int = 16) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            _convolution(dimension, channels, width), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, width, width), nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.down = nn.Sequential(
            _convolution(dimension, width, 2 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, 2 * width, 2 * width), nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.decode = nn.Sequential(
            _convolution(dimension, 3 * width, width), nn.LeakyReLU(LEAKY_SLOPE),
            _zero_last(_convolution(dimension, width, channels)),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encode(image)
        deeper = self.down(features)
        upsampled = nn.functional.interpolate(deeper, size=features.shape[2:], mode="nearest")
        return image + self.decode(torch.cat((features, upsampled), dim=1))


class Discriminator(nn.Module):
    """A patch discriminator (least-squares GAN): one realism score per region of a half-resolution input."""

    def __init__(self, channels: int, *, dimension: int, width: int = 16) -> None:
        super().__init__()
        convolution = convolution_class(dimension)
        self.layers = nn.Sequential(
            average_pool_class(dimension)(2),
            _convolution(dimension, channels, width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, width, 2 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, 2 * width, 4 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            convolution(4 * width, 1, kernel_size=3, padding=1),
        )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.layers(batch)


def shape_prior_size(patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """The shape autoencoder's grid: about a quarter of the patch per axis, a multiple of 8 (three halvings)."""
    return tuple(max(8, 8 * math.ceil(size / 32)) for size in patch_size)


class ShapeAutoencoder(nn.Module):
    """A denoising autoencoder of segmentations on a coarse grid (``shape_prior_size``): plausible shapes in, the
    same out; implausible ones come out nearer to what the training labels look like.

    Input and output are ``(B, K, *grid)``: probabilities in, logits out.
    """

    def __init__(self, channels: int, *, patch_size: tuple[int, ...], width: int = 16) -> None:
        super().__init__()
        dimension = len(patch_size)
        transposed = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dimension]
        self.grid = shape_prior_size(patch_size)
        self.encode = nn.Sequential(
            _convolution(dimension, channels, width), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, width, 2 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, 2 * width, 4 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            _convolution(dimension, 4 * width, 4 * width, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.decode = nn.Sequential(
            transposed(4 * width, 4 * width, kernel_size=2, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            transposed(4 * width, 2 * width, kernel_size=2, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            transposed(2 * width, width, kernel_size=2, stride=2), nn.LeakyReLU(LEAKY_SLOPE),
            convolution_class(dimension)(width, channels, kernel_size=3, padding=1),
        )

    def coarse(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Patch-sized ``(B, K, *patch)`` probabilities averaged onto the autoencoder's grid."""
        pool = nn.functional.adaptive_avg_pool2d if probabilities.ndim == 4 else nn.functional.adaptive_avg_pool3d
        return pool(probabilities, self.grid)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(coarse))
