"""Fit the patch size and batch size of one configuration to the GPU memory budget."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from autoseg.planning.memory_model import PRECISIONS, MemoryEstimate, estimate_training_memory
from autoseg.planning.presets import Preset
from autoseg.planning.topology import Topology, features_per_stage, plan_topology, round_up_to_multiple
from autoseg.records.configuration_parts import Network

# Voxels of the first, unconstrained patch: large enough that the median image always limits it first.
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
MINIMUM_BATCH_SIZE = 2
# One batch should not see more than this fraction of all voxels of the dataset (avoids overfitting tiny datasets).
MAXIMUM_DATASET_FRACTION_PER_BATCH = 0.05


@dataclasses.dataclass(frozen=True)
class FittedPatch:
    """The outcome of fitting: patch, network description, batch size and its memory estimate."""

    patch_size: list[int]
    network: Network
    batch_size: int
    estimate: MemoryEstimate

    @property
    def estimated_memory_gb(self) -> float:
        return self.estimate.total_gb(self.batch_size)


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """A patch of ``INITIAL_PATCH_VOXELS`` voxels that is a cube in millimetres, clipped to the median image.

    Each axis is proportional to ``1 / spacing`` so the patch covers the same physical extent along every axis.
    """
    dimension = len(spacing)
    inverse = [1.0 / s for s in spacing]
    scale = (INITIAL_PATCH_VOXELS[dimension] / math.prod(inverse)) ** (1.0 / dimension)
    return [max(1, round(min(scale * i, m))) for i, m in zip(inverse, median_shape, strict=True)]


def network_description(topology: Topology, *, dimension: int, preset: Preset) -> Network:
    """The ``network`` of a configuration for this topology and preset."""
    stages = topology.number_of_stages
    return Network.from_json({
        "architecture": preset.architecture,
        "features_per_stage": features_per_stage(stages, dimension=dimension),
        "kernel_sizes": topology.kernel_sizes,
        "strides": topology.strides,
        "blocks_per_stage_encoder": preset.encoder_blocks(stages),
        "convs_per_stage_decoder": [preset.decoder_convolutions_per_stage] * (stages - 1),
    })


def _axis_to_shrink(
    patch_size: Sequence[int], median_shape: Sequence[float], divisible_by: Sequence[int]
) -> int | None:
    """The axis whose patch is largest relative to the median image, among axes that can still shrink."""
    candidates = [axis for axis in range(len(patch_size)) if patch_size[axis] >= 2 * divisible_by[axis]]
    if not candidates:
        return None
    return max(candidates, key=lambda axis: (patch_size[axis] / median_shape[axis], -axis))


def fit_patch_and_batch(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    *,
    preset: Preset,
    in_channels: int,
    out_channels: int,
    budget_gb: float,
    dataset_voxels: float,
    precision: str,
) -> FittedPatch:
    """Shrink the patch until a batch of 2 fits the budget, then give the rest of the budget to the batch.

    ``budget_gb`` is the whole device; the precision's reserve (CUDA context, allocator slack) is taken off first.
    The patch starts at ``initial_patch_size`` rounded up to what the network's poolings need. While the memory
    estimate of a batch of two exceeds ``budget_gb``, the axis with the largest patch / median-image ratio loses one
    pooling multiple and the topology is re-planned. The path of patches does not depend on the budget, so a
    smaller budget stops later on the same path: the patch never grows when the budget shrinks. The batch is the
    largest that fits, at least 2, and at most (rounded) 5 % of the dataset's voxels.
    """
    dimension = len(spacing)
    patch = initial_patch_size(spacing, median_shape)
    topology = plan_topology(spacing, patch)
    patch = round_up_to_multiple(patch, topology.divisible_by)
    budget_bytes = PRECISIONS[precision].usable_bytes(budget_gb * 1024**3)
    while True:
        network = network_description(topology, dimension=dimension, preset=preset)
        estimate = estimate_training_memory(
            network, patch, in_channels=in_channels, out_channels=out_channels, precision=precision
        )
        if estimate.total_bytes(MINIMUM_BATCH_SIZE) <= budget_bytes:
            break
        axis = _axis_to_shrink(patch, median_shape, topology.divisible_by)
        if axis is None:  # the smallest patch the topology allows; report its (over-budget) estimate
            break
        patch[axis] -= topology.divisible_by[axis]
        topology = plan_topology(spacing, patch)
        patch = round_up_to_multiple(patch, topology.divisible_by)
    batch_for_memory = estimate.largest_batch(budget_bytes)
    # Rounded to the nearest batch, as the reference does: 6.99 batches' worth of 5 % is a batch of 7.
    batch_for_dataset = round(MAXIMUM_DATASET_FRACTION_PER_BATCH * dataset_voxels / math.prod(patch))
    batch_size = max(MINIMUM_BATCH_SIZE, min(batch_for_memory, batch_for_dataset))
    return FittedPatch(patch_size=[int(v) for v in patch], network=network, batch_size=batch_size, estimate=estimate)
