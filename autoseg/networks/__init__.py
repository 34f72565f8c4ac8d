"""U-Nets built from a plan configuration: plain convolutional and residual-encoder variants, 2D and 3D."""

from __future__ import annotations

from autoseg.networks.registry import ARCHITECTURES, build_network
from autoseg.networks.summary import count_parameters, describe
from autoseg.networks.unet import UNet

__all__ = ["ARCHITECTURES", "UNet", "build_network", "count_parameters", "describe"]
