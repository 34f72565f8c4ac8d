"""Training-memory estimate of a planned U-Net: counted feature maps, scaled by coefficients fitted to measurements.

The estimate is ``activation_factor * bytes_per_activation * batch * A + bytes_per_parameter * P + overhead``:

- ``A`` counts, per training sample, the elements of every tensor autograd keeps for the backward pass, read off
  the architecture (see ``stored_activation_elements``): the input, per convolution unit its convolution output
  (kept by the instance norm) and its normalised output (kept by the in-place LeakyReLU), per residual block the
  shortcut and the sum, per decoder stage the concatenated skip, and per segmentation head its logits and their
  log-softmax (kept by the cross-entropy), and the gradients waiting at each skip connection during the backward
  pass (``activation_breakdown``). Every count is exact arithmetic over the planned stages.
- ``activation_factor`` (> 1) covers what the count leaves out: the gradient buffers that co-exist with the kept
  tensors at the peak of the backward pass, transient outputs (transposed convolutions, normalised residual
  branches), and allocator slack. It is *fitted* with ``benchmarks/memory_model.py``, not guessed.
- ``overhead`` is a constant (allocator and library scratch), fitted with it.
- ``P`` is the parameter count; each parameter costs its weight and SGD momentum plus the gradients alive at the
  peak (fitted: ~9.4 / 10.5 bytes for plain / residual encoder in float32), plus a float16 copy under autocast.

Coefficients per training precision live in ``PRECISIONS``; docs/planning.md records what they were fitted on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from autoseg.records.configuration_parts import Network

GIGABYTE = 1024**3


@dataclasses.dataclass(frozen=True)
class PrecisionCoefficients:
    """Coefficients of the memory estimate for one way of training."""

    bytes_per_activation: float
    bytes_per_parameter: dict[str, float]  # per architecture: where the peak falls in the backward pass differs
    activation_factor: float
    overhead_bytes: float
    calibrated_on: str
    # Memory the estimate cannot see but the device needs (CUDA context, caching-allocator fragmentation): kept out
    # of the budget before fitting, as a constant plus a fraction of the budget.
    reserved_bytes: float = 0.0
    reserved_fraction: float = 0.0

    def usable_bytes(self, budget_bytes: float) -> float:
        """The part of a device budget that training tensors may fill."""
        return budget_bytes * (1.0 - self.reserved_fraction) - self.reserved_bytes


PRECISIONS: dict[str, PrecisionCoefficients] = {
    # Fitted on 36 CPU float32 training steps (benchmarks/memory_model.py --fit: peak RSS growth, 2D and 3D, plain
    # and residual encoder, budgets 0.5-2 GB), scaled to bound every measurement from above; docs/planning.md.
    "float32": PrecisionCoefficients(
        bytes_per_activation=4.0,
        bytes_per_parameter={"plain_unet": 9.439, "resenc_unet": 10.543},
        activation_factor=1.2357,
        overhead_bytes=96_410_909,
        calibrated_on="CPU float32, torch 2.13, 36 plans, predicted/measured 1.00-1.18",
    ),
    # CUDA automatic mixed precision: convolution and norm outputs are float16, so activations take half the bytes,
    # and autocast caches a float16 copy of each weight (+2 bytes per parameter). The activation factor and
    # overhead are carried over from float32 until re-fitted on a GPU. The CUDA context and caching-allocator
    # fragmentation, which max_memory_allocated does not see, are kept out of the budget (0.5 GB + 10 %).
    "mixed": PrecisionCoefficients(
        bytes_per_activation=2.0,
        bytes_per_parameter={"plain_unet": 11.439, "resenc_unet": 12.543},
        activation_factor=1.2357,
        overhead_bytes=96_410_909,
        calibrated_on="derived from float32 (not yet measured on a GPU)",
        reserved_bytes=0.5 * GIGABYTE,
        reserved_fraction=0.10,
    ),
}


def stage_voxels(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[float]:
    """Voxels of one sample's feature map at each stage (the patch divided by the cumulative strides)."""
    voxels = []
    size = [float(v) for v in patch_size]
    for stride in strides:
        size = [s / st for s, st in zip(size, stride, strict=True)]
        voxels.append(math.prod(size))
    return voxels


def activation_breakdown(
    network: Network, patch_size: Sequence[int], *, in_channels: int, out_channels: int
) -> dict[str, float]:
    """Elements per sample of the tensors alive at the peak of a training step, by where they come from.

    - ``data``: the input image and one target map per deep-supervision output.
    - ``encoder``: per plain convolution unit, its convolution output and its normalised (activated) output; per
      residual block additionally the second convolution's output and the activated sum; the stem; the pooled and
      projected shortcut of each downsampling block.
    - ``decoder``: per stage the concatenated skip plus two tensors per convolution unit.
    - ``heads``: logits and their log-softmax per deep-supervision output.
    - ``skip_gradients``: during the backward pass the gradient flowing into each skip connection waits, accumulated,
      until the backward pass reaches that encoder stage; these buffers all co-exist with the kept activations.
    """
    features = network.features_per_stage
    blocks = network.blocks_per_stage_encoder
    decoder_convolutions = network.convs_per_stage_decoder
    voxels = stage_voxels(patch_size, network.strides)
    residual = network.architecture == "resenc_unet"
    parts = {"data": in_channels * voxels[0] + sum(voxels[:-1]), "encoder": 0.0, "decoder": 0.0, "heads": 0.0,
             "skip_gradients": 0.0}
    for stage, (channels, voxel_count) in enumerate(zip(features, voxels, strict=True)):
        if residual:
            parts["encoder"] += blocks[stage] * 4 * channels * voxel_count
            if stage == 0:
                parts["encoder"] += 2 * channels * voxel_count
            else:
                parts["encoder"] += (features[stage - 1] + channels) * voxel_count
        else:
            parts["encoder"] += blocks[stage] * 2 * channels * voxel_count
    for stage in range(len(features) - 1):
        channels, voxel_count = features[stage], voxels[stage]
        parts["decoder"] += (2 + 2 * decoder_convolutions[stage]) * channels * voxel_count
        parts["heads"] += 2 * out_channels * voxel_count
        parts["skip_gradients"] += channels * voxel_count
    return parts


def stored_activation_elements(
    network: Network, patch_size: Sequence[int], *, in_channels: int, out_channels: int
) -> float:
    """Elements per sample alive at the peak of a training step (the sum of ``activation_breakdown``)."""
    return sum(activation_breakdown(network, patch_size, in_channels=in_channels, out_channels=out_channels).values())


def parameter_count(network: Network, *, in_channels: int, out_channels: int) -> int:
    """Number of trainable parameters of the planned U-Net (convolution weights, norm affines, heads)."""
    features = network.features_per_stage
    kernels = network.kernel_sizes
    strides = network.strides
    residual = network.architecture == "resenc_unet"

    def unit(cin: int, cout: int, kernel: Sequence[int]) -> int:
        return cin * cout * math.prod(kernel) + 2 * cout

    total = 0
    for stage, channels in enumerate(features):
        previous = (features[stage - 1] if stage > 0 else (features[0] if residual else in_channels))
        if residual:
            if stage == 0:
                total += unit(in_channels, channels, kernels[0])
            for block in range(network.blocks_per_stage_encoder[stage]):
                cin = previous if block == 0 else channels
                total += unit(cin, channels, kernels[stage]) + unit(channels, channels, kernels[stage])
                if block == 0 and cin != channels:
                    total += unit(cin, channels, [1] * len(kernels[stage]))
        else:
            for block in range(network.blocks_per_stage_encoder[stage]):
                total += unit(previous if block == 0 else channels, channels, kernels[stage])
    for stage in range(len(features) - 1):
        channels, deeper = features[stage], features[stage + 1]
        total += deeper * channels * math.prod(strides[stage + 1])
        for convolution in range(network.convs_per_stage_decoder[stage]):
            total += unit(2 * channels if convolution == 0 else channels, channels, kernels[stage])
        total += channels * out_channels + out_channels
    return total


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Training memory split into the part that scales with the batch and the part that does not."""

    bytes_per_sample: float
    fixed_bytes: float

    def total_bytes(self, batch_size: int) -> float:
        return self.fixed_bytes + batch_size * self.bytes_per_sample

    def total_gb(self, batch_size: int) -> float:
        return self.total_bytes(batch_size) / GIGABYTE

    def largest_batch(self, budget_bytes: float) -> int:
        """The largest batch whose estimate fits ``budget_bytes`` (may be 0 when even one sample does not fit)."""
        return max(0, int((budget_bytes - self.fixed_bytes) // self.bytes_per_sample))


def estimate_training_memory(
    network: Network,
    patch_size: Sequence[int],
    *,
    in_channels: int,
    out_channels: int,
    precision: str = "mixed",
) -> MemoryEstimate:
    """Estimated peak memory of one training step (forward, deep-supervised loss, backward, SGD update)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown training precision {precision!r}; known: {', '.join(PRECISIONS)}")
    coefficients = PRECISIONS[precision]
    elements = stored_activation_elements(network, patch_size, in_channels=in_channels, out_channels=out_channels)
    parameters = parameter_count(network, in_channels=in_channels, out_channels=out_channels)
    return MemoryEstimate(
        bytes_per_sample=coefficients.activation_factor * coefficients.bytes_per_activation * elements,
        fixed_bytes=coefficients.bytes_per_parameter[network.architecture] * parameters
        + coefficients.overhead_bytes,
    )
