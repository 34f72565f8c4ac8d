"""Pseudo-Dice: a cheap validation signal from patches, used to pick the best checkpoint (not a real evaluation).

Over all validation patches of an epoch we accumulate, per foreground class (or region), true positives, false
positives and false negatives, and report ``2 TP / (2 TP + FP + FN)``. Summing counts before dividing weighs every
voxel equally and stays defined for patches without a class. Voxels with the ignore label are not counted.
"""

from __future__ import annotations

import torch


def count_overlaps(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    regions: tuple[tuple[int, ...], ...] | None = None,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """``(classes, 3)`` float64 tensor of TP, FP, FN per foreground output.

    Args:
        logits: ``(B, C, *spatial)`` network output at full resolution.
        target: ``(B, 1, *spatial)`` label values.
        regions: sigmoid outputs, region ``r`` = "label in regions[r]" (all foreground); None: softmax outputs,
            channel 0 = background.
        ignore_label: label value excluded from the counts.
    """
    logits = logits.detach().float()
    target = target.detach()
    labels = target[:, :1].long()
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_label is None else labels != ignore_label
    if regions is not None:
        predicted = logits > 0  # sigmoid(x) > 0.5
        reference = torch.cat(
            [torch.isin(labels, torch.tensor(region, device=labels.device)) for region in regions], dim=1
        )
    else:
        classes = torch.arange(1, logits.shape[1], device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
        predicted = logits.argmax(1, keepdim=True) == classes
        reference = labels == classes
    predicted = predicted & valid
    reference = reference & valid
    reduce_dims = [0, *range(2, logits.ndim)]
    true_positive = (predicted & reference).sum(reduce_dims)
    false_positive = (predicted & ~reference).sum(reduce_dims)
    false_negative = (~predicted & reference).sum(reduce_dims)
    return torch.stack([true_positive, false_positive, false_negative], dim=1).double().cpu()


def dice_from_counts(counts: torch.Tensor) -> list[float | None]:
    """Dice per class from summed ``(classes, 3)`` counts; None for a class absent from prediction and reference."""
    dice: list[float | None] = []
    for true_positive, false_positive, false_negative in counts.tolist():
        denominator = 2 * true_positive + false_positive + false_negative
        dice.append(None if denominator == 0 else 2 * true_positive / denominator)
    return dice


def mean_dice(dice: list[float | None]) -> float:
    """Mean over classes that were present (0 if none was)."""
    present = [value for value in dice if value is not None]
    return sum(present) / len(present) if present else 0.0
