"""Sliding-window prediction: overlapping patches, Gaussian importance weighting, test-time mirroring.

A network trained on patches of size ``P`` is applied to a larger image by tiling it with patches whose starts are
at most ``step_size * P`` apart, so every voxel is seen by at least one patch (and most by several). The overlapping
predictions are blended with a Gaussian importance map ``w`` centred on the patch (sigma = P / 8 per axis), because
a convolutional network is least reliable near the patch border where it lacks context::

    logits(v) = sum_t w_t(v) * f(patch_t)(v) / sum_t w_t(v)

With test-time mirroring every patch is also predicted after flipping it along each subset of the mirror axes; the
flipped predictions are flipped back and averaged (``2^len(mirror_axes)`` forward passes per patch).

Example:
    >>> from autoseg.networks import build_network
    >>> network = build_network(configuration, in_channels=1, out_channels=3, deep_supervision=False).eval()
    >>> data = torch.randn(1, 40, 80, 40)  # (C, z, y, x): longer than the 40 x 56 x 40 patch along y only
    >>> tile_starts(data.shape[1:], (40, 56, 40), step_size=0.5)  # two overlapping tiles along y
    [[0], [0, 24], [0]]
    >>> logits = predict_sliding_window(network, data, patch_size=(40, 56, 40), num_classes=3)
    >>> logits.shape, logits.dtype
    (torch.Size([3, 40, 80, 40]), torch.float32)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoseg.inference.quality import FlipAgreement
from autoseg.utils.precision import autocast_for
from autoseg.utils.progress import progress_display

GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
PROGRESS_MINIMUM_BATCHES = 64


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int], *, step_size: float) -> list[list[int]]:
    """Start index of every tile along each axis: evenly spread, at most ``step_size * patch`` apart.

    Along an axis of size ``s >= p``, ``n = ceil((s - p) / (step_size * p)) + 1`` tiles are placed at
    ``round(i * (s - p) / (n - 1))``, so the first tile touches the start, the last the end, and the actual step
    ``(s - p) / (n - 1)`` never exceeds ``step_size * p``.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    starts_per_axis = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; pad first")
        largest_start = size - patch
        if largest_start == 0:
            starts_per_axis.append([0])
            continue
        num_tiles = math.ceil(largest_start / (step_size * patch)) + 1
        spacing_between_starts = largest_start / (num_tiles - 1)
        # A patch of 1 (2D slices) gives more tiles than positions: drop the duplicates.
        starts = sorted({round(i * spacing_between_starts) for i in range(num_tiles)})
        starts_per_axis.append(starts)
    return starts_per_axis


@functools.lru_cache(maxsize=8)
def _gaussian_importance_map_cached(patch_size: tuple[int, ...], sigma_scale: float, device: str) -> torch.Tensor:
    axes = []
    for patch in patch_size:
        coordinates = torch.arange(patch, dtype=torch.float64) - (patch - 1) / 2.0
        sigma = max(patch * sigma_scale, 1e-6)
        axes.append(torch.exp(-0.5 * (coordinates / sigma) ** 2))
    importance = axes[0]
    for axis in axes[1:]:
        importance = importance[..., None] * axis
    importance = importance / importance.max()
    # Strictly positive everywhere so that every covered voxel has a non-zero total weight.
    importance = importance.clamp_min(1e-6).to(torch.float32)
    return importance.to(device)


def gaussian_importance_map(
    patch_size: Sequence[int], *, sigma_scale: float = GAUSSIAN_SIGMA_SCALE, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Separable Gaussian ``prod_a exp(-(i_a - c_a)^2 / (2 (sigma_scale * P_a)^2))`` scaled to a maximum of 1.

    Values are clamped to at least 1e-6 so that the blending denominator is positive everywhere. The map is cached
    per (patch size, sigma, device); do not modify the returned tensor in place.
    """
    return _gaussian_importance_map_cached(tuple(int(p) for p in patch_size), float(sigma_scale), str(device))


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (the empty one first): the flips used for test-time augmentation."""
    axes = tuple(mirror_axes or ())
    return [combination for count in range(len(axes) + 1) for combination in itertools.combinations(axes, count)]


def _accumulation_device(
    device: torch.device, accumulate_on: str | torch.device | None, *, num_values: int
) -> torch.device:
    """``accumulate_on``, else ``device`` unless it is a GPU whose free memory is less than twice the sums' size."""
    if accumulate_on is not None:
        return torch.device(accumulate_on)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        if 4 * num_values * 2 > free_bytes:
            return torch.device("cpu")
    return device


def _network_output(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    output = network(batch)
    # A network left in deep-supervision mode returns one output per scale, full resolution first.
    if isinstance(output, (list, tuple)):
        output = output[0]
    return output


def _predict_batch_with_mirroring(
    network: torch.nn.Module, batch: torch.Tensor, flips: list[tuple[int, ...]], agreement: FlipAgreement | None = None
) -> torch.Tensor:
    """Mean over ``flips`` of flip(network(flip(batch))); flips are network spatial axes (0 = first after channel).
    ``agreement`` observes every flipped-back pass (the quality estimate's mirror agreement)."""
    total = None
    for flip in flips:
        dims = [axis + 2 for axis in flip]
        flipped_input = torch.flip(batch, dims) if dims else batch
        output = _network_output(network, flipped_input)
        output = torch.flip(output, dims) if dims else output
        output = output.float()
        if agreement is not None:
            agreement.observe(output)
        total = output if total is None else total.add_(output)
    if len(flips) > 1:
        total /= len(flips)
    return total


def _batches(items: list, batch_size: int) -> Iterator[list]:
    for first in range(0, len(items), batch_size):
        yield items[first : first + batch_size]


def _as_image(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    data = torch.as_tensor(data)
    if data.ndim != 4:
        raise ValueError(f"data must be (C, z, y, x), got shape {tuple(data.shape)}")
    return data


def _volume_patch(patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """The patch in volume axes: a 2D network's patch is one slice along axis 0 (squeezed away before the network)."""
    if len(patch_size) == 2:
        return (1, *patch_size)
    if len(patch_size) == 3:
        return patch_size
    raise ValueError(f"patch_size must have 2 or 3 values, got {patch_size}")


def _pad_to_patch(data: torch.Tensor, volume_patch: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``data`` zero-padded (centred) to at least the patch along every axis, and the padding before each axis."""
    image_size = tuple(data.shape[1:])
    padded_size = tuple(max(size, patch) for size, patch in zip(image_size, volume_patch, strict=True))
    padding_before = tuple((padded - size) // 2 for padded, size in zip(padded_size, image_size, strict=True))
    if padded_size != image_size:
        pad_arguments: list[int] = []
        for before, padded, size in reversed(list(zip(padding_before, padded_size, image_size, strict=True))):
            pad_arguments += [before, padded - size - before]
        data = torch.nn.functional.pad(data, pad_arguments)
    return data, padding_before


def _tiles(padded_size: tuple[int, ...], volume_patch: tuple[int, ...], step_size: float) -> list[tuple[slice, ...]]:
    """The spatial slices of every tile covering ``padded_size``."""
    starts_per_axis = tile_starts(padded_size, volume_patch, step_size=step_size)
    return [
        tuple(slice(start, start + patch) for start, patch in zip(starts, volume_patch, strict=True))
        for starts in itertools.product(*starts_per_axis)
    ]


def _checked_flips(mirror_axes: Sequence[int] | None, network_dimensions: int) -> list[tuple[int, ...]]:
    """``mirror_combinations(mirror_axes)``, refusing an axis the network does not have."""
    flips = mirror_combinations(mirror_axes)
    for axis in (axis for flip in flips for axis in flip):
        if not 0 <= axis < network_dimensions:
            raise ValueError(f"mirror axis {axis} is not a spatial axis of a {network_dimensions}D network")
    return flips


@dataclass
class _WeightedSums:
    """The blending sums over the padded image: ``logits = sum_t w_t * f(patch_t)`` and ``weight_sum = sum_t w_t``."""

    logits: torch.Tensor
    weight_sum: torch.Tensor
    importance: torch.Tensor

    @classmethod
    def zeros(
        cls,
        num_classes: int,
        padded_size: tuple[int, ...],
        volume_patch: tuple[int, ...],
        *,
        use_gaussian: bool,
        device: torch.device,
        accumulate_on: str | torch.device | None,
    ) -> _WeightedSums:
        """Empty sums on the accumulation device (see ``_accumulation_device``) with the tiles' importance map."""
        device = _accumulation_device(device, accumulate_on, num_values=(num_classes + 1) * math.prod(padded_size))
        if use_gaussian:
            importance = gaussian_importance_map(volume_patch, device=device)
        else:
            importance = torch.ones(volume_patch, dtype=torch.float32, device=device)
        logits = torch.zeros((num_classes, *padded_size), dtype=torch.float32, device=device)
        weight_sum = torch.zeros(padded_size, dtype=torch.float32, device=device)
        return cls(logits, weight_sum, importance)

    def add(self, batch_tiles: list[tuple[slice, ...]], prediction: torch.Tensor) -> None:
        """Add each tile's prediction ``(num_classes, *tile)``, weighted by the importance map, at its place."""
        logits, weight_sum, importance = self.logits, self.weight_sum, self.importance
        for tile, tile_prediction in zip(batch_tiles, prediction.to(logits.device), strict=True):
            logits[(slice(None), *tile)].addcmul_(tile_prediction, importance)
            weight_sum[tile] += importance

    def blended(self) -> torch.Tensor:
        """``logits / weight_sum``, computed in place: the sums are not needed afterwards."""
        self.logits /= self.weight_sum
        return self.logits


def _accumulate_tile_predictions(
    network: torch.nn.Module,
    data: torch.Tensor,
    tiles: list[tuple[slice, ...]],
    sums: _WeightedSums,
    *,
    flips: list[tuple[int, ...]],
    is_2d_network: bool,
    device: torch.device,
    batch_size: int,
    precision: str,
    progress: bool | None,
    agreement: FlipAgreement | None = None,
) -> None:
    """Predict the tiles of ``data`` batch by batch on ``device`` and add every prediction into ``sums``."""
    num_classes = sums.logits.shape[0]
    autocast = autocast_for(device, precision)
    with torch.inference_mode(), autocast:
        batches = list(_batches(tiles, batch_size))
        show_progress = progress if progress is not None else len(batches) >= PROGRESS_MINIMUM_BATCHES
        # Inner to a per-case display, so it writes nothing to a log file.
        batch_display = progress_display(batches, description="sliding window", unit="batch", enabled=show_progress,
                                         leave=False, lines_in_logs=False)
        for batch_tiles in batch_display:
            batch = torch.stack([data[(slice(None), *tile)] for tile in batch_tiles]).to(device, non_blocking=True)
            if is_2d_network:
                batch = batch[:, :, 0]
            prediction = _predict_batch_with_mirroring(network, batch, flips, agreement)
            if agreement is not None:
                agreement.commit(sums.importance)
            if is_2d_network:
                prediction = prediction[:, :, None]
            if prediction.shape[1] != num_classes:
                raise ValueError(f"network returned {prediction.shape[1]} channels, expected num_classes={num_classes}")
            sums.add(batch_tiles, prediction)


def _crop_padding(logits: torch.Tensor, image_size: tuple[int, ...], padding_before: tuple[int, ...]) -> torch.Tensor:
    """``logits`` without the padding ``_pad_to_patch`` added (a copy, so the padded sums can be freed)."""
    if tuple(logits.shape[1:]) == image_size:
        return logits
    crop = tuple(slice(before, before + size) for before, size in zip(padding_before, image_size, strict=True))
    return logits[(slice(None), *crop)].clone()


def predict_sliding_window(
    network: torch.nn.Module,
    data: torch.Tensor | np.ndarray,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    step_size: float = 0.5,
    mirror_axes: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    use_gaussian: bool = True,
    precision: str = "auto",
    accumulate_on: str | torch.device | None = None,
    progress: bool | None = None,
    agreement: FlipAgreement | None = None,
) -> torch.Tensor:
    """Predict logits ``(num_classes, z, y, x)`` (float32) for ``data`` ``(C, z, y, x)``.

    Args:
        network: maps ``(B, C, *patch_size)`` to ``(B, num_classes, *patch_size)``; put it in eval mode first.
        data: the preprocessed image, channels first.
        patch_size: the network's patch: 3 values for a 3D network, 2 for a 2D network. A 2D network is applied
            to every slice along axis 0 of the volume (a 2D image is a volume of one slice).
        num_classes: number of network output channels.
        step_size: largest distance between neighbouring tile starts as a fraction of the patch (0.5 = half).
        mirror_axes: network spatial axes (0-based, in patch order) to mirror for test-time augmentation; every
            subset of them is predicted and the results are averaged. None or () disables mirroring.
        device: where the network runs and the logits are accumulated.
        batch_size: tiles per forward pass.
        use_gaussian: blend with the Gaussian importance map (else a flat average).
        precision: arithmetic of the network: ``auto`` (float16 autocast on CUDA, bfloat16 on CPUs with native
            bfloat16, float32 elsewhere; see ``autoseg.utils.precision``), ``float32``, ``float16`` or
            ``bfloat16``. Accumulation is always float32.
        accumulate_on: where the ``(num_classes, z, y, x)`` sums live and the result is returned; None = ``device``,
            except on a GPU without room for them (then the CPU).
        progress: show a tqdm bar over the batches on a terminal (never in a log file); None = only for large
            images (at least ``PROGRESS_MINIMUM_BATCHES`` batches).
        agreement: collects how far the mirror passes agree (``autoseg.inference.quality.FlipAgreement``).

    Images smaller than the patch along an axis are padded with zeros (centred) and the result is cropped back.
    """
    device = torch.device(device)
    data = _as_image(data)
    patch_size = tuple(int(p) for p in patch_size)
    volume_patch = _volume_patch(patch_size)
    image_size = tuple(data.shape[1:])
    data, padding_before = _pad_to_patch(data, volume_patch)
    padded_size = tuple(data.shape[1:])
    tiles = _tiles(padded_size, volume_patch, step_size)
    sums = _WeightedSums.zeros(
        num_classes, padded_size, volume_patch, use_gaussian=use_gaussian, device=device, accumulate_on=accumulate_on
    )
    _accumulate_tile_predictions(
        network, data, tiles, sums, flips=_checked_flips(mirror_axes, len(patch_size)),
        is_2d_network=len(patch_size) == 2, device=device, batch_size=batch_size, precision=precision,
        progress=progress, agreement=agreement,
    )
    return _crop_padding(sums.blended(), image_size, padding_before)


def padded_windows(
    data: torch.Tensor | np.ndarray, patch_size: Sequence[int]
) -> tuple[torch.Tensor, list[tuple[slice, ...]]]:
    """``data`` padded as the sliding window pads it, and the non-overlapping windows (step 1) that cover it.

    Test-time adaptation optimises on whole windows of the network's patch; a 2D patch's windows are single slices.
    """
    volume_patch = _volume_patch(tuple(int(p) for p in patch_size))
    padded, _ = _pad_to_patch(_as_image(data), volume_patch)
    return padded, _tiles(tuple(padded.shape[1:]), volume_patch, 1.0)
