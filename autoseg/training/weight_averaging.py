"""An exponential moving average (EMA) of the network's weights, for validation and for the model a run exports.

A short schedule ends while its weights still jump from batch to batch; their running average is a smoother, often
better model at no training cost. torch's ``AveragedModel`` keeps the copy; the update is an EMA whose decay is capped
early in training at ``(1 + n) / (10 + n)`` after ``n`` updates, so the average forgets the random initial weights
quickly instead of dragging them along for ``1 / (1 - decay)`` steps.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, updates_so_far: int) -> float:
    """``min(decay, (1 + n) / (10 + n))``: the decay used for the update after ``n`` earlier ones.

    >>> warmed_up_decay(0.999, 0), round(warmed_up_decay(0.999, 90), 3), warmed_up_decay(0.999, 100000)
    (0.1, 0.91, 0.999)
    """
    return min(decay, (1.0 + updates_so_far) / (10.0 + updates_so_far))


def make_weight_average(network: torch.nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``network`` (unwrapped, not DDP) updated by a warmed-up EMA of ``decay`` per step."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"weight-averaging decay must be in (0, 1), got {decay}")

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates_so_far: torch.Tensor) -> None:
        step_decay = warmed_up_decay(decay, int(updates_so_far))
        torch._foreach_lerp_(averaged, current, 1.0 - step_decay)

    return AveragedModel(network, multi_avg_fn=update, use_buffers=True)


__all__ = ["make_weight_average", "warmed_up_decay"]
