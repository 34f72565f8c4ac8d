"""The frozen segmenter as a differentiable function of its input window, and the windows of one image.

Adaptation never changes the segmentation network: its parameters stay frozen and gradients flow through it to
whatever sits in front of it (a normaliser or a renderer). Windows are the network's patches, cut as the sliding
window pads the image (``padded_windows``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from autoseg.inference.sliding_window import padded_windows
from autoseg.records.dataset import RawDataset


class FrozenSegmenter(nn.Module):
    """``network`` in eval mode with frozen parameters, returning class probabilities (softmax, or sigmoid)."""

    def __init__(self, network: nn.Module, *, uses_regions: bool) -> None:
        super().__init__()
        self.network = network.eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.uses_regions = uses_regions

    def train(self, mode: bool = True) -> FrozenSegmenter:  # the segmenter stays in eval mode whatever wraps it
        return self

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.network(batch)
        return output[0] if isinstance(output, (list, tuple)) else output

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.logits(batch)
        return torch.sigmoid(logits) if self.uses_regions else torch.softmax(logits, dim=1)


class Composed(nn.Module):
    """``segmenter_network(front(x))``: what the sliding window runs once a front network is adapted."""

    def __init__(self, front: nn.Module, network: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.network = network

    def forward(self, batch: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.network(self.front(batch))


def mean_entropy(probabilities: torch.Tensor, *, uses_regions: bool) -> torch.Tensor:
    """Mean per-voxel entropy (nats) of ``(B, K, ...)`` probabilities: softmax over K, or K independent sigmoids."""
    p = probabilities.clamp(1e-6, 1 - 1e-6)
    if uses_regions:
        return -(p * p.log() + (1 - p) * (1 - p).log()).sum(1).mean()
    return -(p * p.log()).sum(1).mean()


class ImageWindows:
    """The windows of one preprocessed image ``(C, z, y, x)`` as network batches ``(B, C, *patch)``."""

    def __init__(
        self, data: torch.Tensor | np.ndarray, patch_size: Sequence[int], *, device: torch.device | str = "cpu"
    ) -> None:
        self.is_2d = len(patch_size) == 2
        padded, self.windows = padded_windows(torch.as_tensor(np.asarray(data, dtype=np.float32)), patch_size)
        self.padded = padded.to(device)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, indices: Sequence[int], source: torch.Tensor | None = None) -> torch.Tensor:
        """The windows ``indices`` of the padded image (or of ``source``, an array of the same padded shape)."""
        array = self.padded if source is None else source
        batch = torch.stack([array[(slice(None), *self.windows[index])] for index in indices])
        return batch[:, :, 0] if self.is_2d else batch

    def sample(self, count: int, generator: torch.Generator) -> list[int]:
        """``count`` window indices drawn with ``generator`` (all windows when there are no more)."""
        if len(self.windows) <= count:
            return list(range(len(self.windows)))
        return torch.randperm(len(self.windows), generator=generator)[:count].tolist()


def target_channels(segmentation: np.ndarray | torch.Tensor, *, dataset: RawDataset) -> torch.Tensor:
    """Label map ``(1, ...)`` -> network target channels ``(K, ...)`` float: one-hot classes or region masks."""
    labels = torch.as_tensor(np.asarray(segmentation)).long()[0]
    if dataset.has_regions:
        return torch.stack([torch.isin(labels, torch.tensor(region)) for region in dataset.regions]).float()
    channels = dataset.num_output_channels
    labels = torch.where((labels >= 0) & (labels < channels), labels, torch.zeros_like(labels))
    return torch.nn.functional.one_hot(labels, channels).movedim(-1, 0).float()
