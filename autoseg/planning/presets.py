"""Network presets: the plain U-Net and the residual-encoder U-Nets M / L / XL, each with its default GPU budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def two_convolutions_per_stage(number_of_stages: int) -> list[int]:
    """Plain U-Net: two convolution units in every encoder stage."""
    return [2] * number_of_stages


def residual_blocks_per_stage(number_of_stages: int) -> list[int]:
    """Residual encoder: 1, 3, 4, 6, 6, 6, ... blocks; depth goes where the feature maps are small and cheap."""
    schedule = [1, 3, 4]
    return [schedule[stage] if stage < len(schedule) else 6 for stage in range(number_of_stages)]


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a preset fixes: the architecture, how deep each stage is, and the default GPU memory budget."""

    architecture: str
    gpu_memory_gb: float
    encoder_blocks: Callable[[int], list[int]]
    decoder_convolutions_per_stage: int
    description: str


PRESETS: dict[str, Preset] = {
    "default": Preset("plain_unet", 8.0, two_convolutions_per_stage, 2, "plain convolutional U-Net, 8 GB"),
    "resenc-m": Preset("resenc_unet", 8.0, residual_blocks_per_stage, 1, "residual-encoder U-Net M, 8 GB"),
    "resenc-l": Preset("resenc_unet", 24.0, residual_blocks_per_stage, 1, "residual-encoder U-Net L, 24 GB"),
    "resenc-xl": Preset("resenc_unet", 40.0, residual_blocks_per_stage, 1, "residual-encoder U-Net XL, 40 GB"),
}
