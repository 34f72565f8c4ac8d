"""From network probabilities to label maps, and label maps to the one-hot channels a cascade stage reads."""

from __future__ import annotations

import numpy as np
import torch

from autoseg.records.dataset import RawDataset


def probabilities_from_logits(logits: torch.Tensor, *, uses_regions: bool) -> torch.Tensor:
    """Softmax over classes (channel axis 0), or an independent sigmoid per region (regions may overlap)."""
    return torch.sigmoid(logits) if uses_regions else torch.softmax(logits, dim=0)


def label_map_from_probabilities(probabilities: torch.Tensor | np.ndarray, *, dataset: RawDataset) -> np.ndarray:
    """Label values ``(z, y, x)`` (uint8, or uint16 beyond 255 classes).

    Classes: the argmax channel, which is the label value because label values are consecutive from 0.
    Regions: each region with probability > 0.5 paints its ``regions_class_order`` value, in that order, so later
    (inner) regions overwrite earlier (outer) ones.
    """
    probabilities = torch.as_tensor(probabilities)
    dtype = np.uint8 if max(dataset.declared_label_values) < 256 else np.uint16
    if not dataset.has_regions:
        return probabilities.argmax(0).numpy().astype(dtype)
    label_map = np.zeros(tuple(probabilities.shape[1:]), dtype=dtype)
    order = dataset.regions_class_order or tuple(range(1, len(dataset.regions) + 1))
    for channel, value in enumerate(order):
        label_map[(probabilities[channel] > 0.5).numpy()] = value
    return label_map


def one_hot_foreground(label_map: np.ndarray | torch.Tensor, *, foreground_labels: tuple[int, ...]) -> torch.Tensor:
    """Float32 ``(len(foreground_labels), z, y, x)``: channel i is 1 where the label equals foreground_labels[i]."""
    label_map = torch.as_tensor(np.asarray(label_map))
    return torch.stack([(label_map == value) for value in foreground_labels]).float()


def previous_stage_label_map(
    previous_probabilities: torch.Tensor, target_shape: tuple[int, ...], *, dataset: RawDataset
) -> np.ndarray:
    """The previous (low-resolution) stage's segmentation on the target grid, as a label map.

    Both stages crop and transpose a case identically and differ only in resampling, so the previous stage's
    probabilities ``(K, z', y', x')`` are resized (trilinear) to ``target_shape`` and turned into a label map.
    """
    probabilities = torch.as_tensor(previous_probabilities).float()
    if tuple(probabilities.shape[1:]) != tuple(target_shape):
        mode = "trilinear" if len(target_shape) == 3 else "bilinear"
        probabilities = torch.nn.functional.interpolate(
            probabilities[None], size=tuple(target_shape), mode=mode, align_corners=False
        )[0]
    return label_map_from_probabilities(probabilities, dataset=dataset)


def previous_stage_channels(
    previous_probabilities: torch.Tensor, target_shape: tuple[int, ...], *, dataset: RawDataset
) -> torch.Tensor:
    """Cascade input: the previous stage's segmentation (``previous_stage_label_map``) as one-hot channels over
    the foreground labels (background is implied): ``len(dataset.foreground_labels)`` channels of 0/1. Training
    builds the same channels from stored label maps (``autoseg.training.cascade``)."""
    label_map = previous_stage_label_map(previous_probabilities, target_shape, dataset=dataset)
    return one_hot_foreground(label_map, foreground_labels=dataset.foreground_labels)
