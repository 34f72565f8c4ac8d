"""Network topology from spacing and patch size: how often each axis is downsampled and its kernel size per stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# An axis is halved only while its feature map stays at least this large afterwards: a 3-kernel on fewer than 4
# voxels sees mostly padding.
MINIMUM_FEATURE_MAP_SIZE = 4
# Two axes whose spacings are within this factor are treated as equally fine (pooled together, 3-wide kernels).
SPACING_RATIO_FOR_POOLING = 2.0
# The deepest 3D network the reference uses has 6 stages (5 poolings), the deepest 2D one 8 (7 poolings).
MAXIMUM_POOLINGS = {2: 7, 3: 5}


@dataclasses.dataclass(frozen=True)
class Topology:
    """Strides and kernel sizes per stage (stage 0 first, stride 1), and what the patch must be divisible by."""

    strides: list[list[int]]
    kernel_sizes: list[list[int]]

    @property
    def number_of_stages(self) -> int:
        return len(self.strides)

    @property
    def divisible_by(self) -> list[int]:
        """Per axis, the product of that axis' strides: patch sizes must be multiples of it."""
        result = [1] * len(self.strides[0])
        for stride in self.strides:
            result = [r * s for r, s in zip(result, stride, strict=True)]
        return result


def plan_topology(spacing: Sequence[float], patch_size: Sequence[int]) -> Topology:
    """Decide stage by stage which axes are halved and which get 3-wide kernels.

    At each stage an axis is halved when (a) its current size allows it (``size >= 2 * MINIMUM_FEATURE_MAP_SIZE``)
    and (b) its current spacing is within 2x of the finest current spacing of all axes. For 3.0 x 0.8 x 0.8 mm this
    halves only the in-plane axes first (0.8 -> 1.6 -> 3.2 mm), then all three once the spacings have met, so the
    receptive field grows isotropically in millimetres. An axis gets a 3-wide kernel once its current spacing is
    within 2x of the finest (and keeps it); before that its kernel is 1, so the coarse axis is not blurred across
    slices that are far apart. The finest spacing is taken over *all* axes, so a smaller patch never pools an axis
    more often than a larger one (patch sizes stay monotone when the memory budget shrinks).
    """
    dimension = len(spacing)
    current_spacing = [float(v) for v in spacing]
    current_size = [float(v) for v in patch_size]
    has_full_kernel = [False] * dimension

    def kernel_for(spacings: list[float]) -> list[int]:
        finest = min(spacings)
        for axis in range(dimension):
            if spacings[axis] <= SPACING_RATIO_FOR_POOLING * finest:
                has_full_kernel[axis] = True
        return [3 if full else 1 for full in has_full_kernel]

    strides = [[1] * dimension]
    kernel_sizes = [kernel_for(current_spacing)]
    for _ in range(MAXIMUM_POOLINGS[dimension]):
        finest = min(current_spacing)
        stride = [
            2
            if current_size[axis] >= 2 * MINIMUM_FEATURE_MAP_SIZE
            and current_spacing[axis] <= SPACING_RATIO_FOR_POOLING * finest
            else 1
            for axis in range(dimension)
        ]
        if all(s == 1 for s in stride):
            break
        current_spacing = [sp * st for sp, st in zip(current_spacing, stride, strict=True)]
        current_size = [size / st for size, st in zip(current_size, stride, strict=True)]
        strides.append(stride)
        kernel_sizes.append(kernel_for(current_spacing))
    return Topology(strides=strides, kernel_sizes=kernel_sizes)


def round_up_to_multiple(patch_size: Sequence[int], divisible_by: Sequence[int]) -> list[int]:
    """Each axis rounded up to a multiple of its divisor (the network halves it that many times)."""
    return [int(-(-int(size) // int(d)) * int(d)) for size, d in zip(patch_size, divisible_by, strict=True)]


def features_per_stage(number_of_stages: int, *, dimension: int, base_features: int = 32) -> list[int]:
    """``32 * 2^stage`` capped at 320 (3D) or 512 (2D): deeper stages hold coarser, richer features."""
    cap = 320 if dimension == 3 else 512
    return [min(base_features * 2**stage, cap) for stage in range(number_of_stages)]
