"""One optimiser step, the same for the training loop and the machine's throughput probes; and its batch size.

``optimiser_step`` is what every training iteration does: batch to the device, forward under autocast in the run's
precision, loss, scaled backward, gradient clipping, optimiser and scaler step, and reading the loss back (which
waits for an asynchronous device). ``autoseg.pipeline.machine_benchmark`` times this very function, so the
machine's measured step cannot drift from the real one.

``training_batch_size`` is the CPU batch rule: the plan's batch fills a GPU, but on a CPU it would leave too few
optimiser steps in any affordable time, so a step is capped at ``CPU_VOXELS_PER_STEP`` voxels (docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from autoseg.records.plans import Configuration
from autoseg.utils.precision import autocast_for

# Voxels (batch x patch) of one CPU training step; more steps of a smaller batch learn more per second on a CPU
# (step times per precision and the HC18 example in docs/training.md, "Batch size").
CPU_VOXELS_PER_STEP = 1_200_000


def training_batch_size(configuration: Configuration, requested: int | None, device: torch.device) -> int:
    """``requested``, else the plan's batch size; on CPU at most ``CPU_VOXELS_PER_STEP`` voxels but never below 2.

    Hippocampus 3d_fullres (7 x 40x56x40, 0.63 M voxels) keeps its plan; HC18 2d (6 x 640x896) trains with 2.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch size must be at least 1, got {requested}")
        return int(requested)
    planned = configuration.batch_size
    if device.type != "cpu":
        return planned
    patch_voxels = math.prod(configuration.patch_size)
    return min(planned, max(2, CPU_VOXELS_PER_STEP // patch_voxels))


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors (or numpy arrays, or lists of them) moved to ``device``."""
    if isinstance(value, (list, tuple)):
        return [to_device(item, device) for item in value]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return value.to(device, non_blocking=True)


def as_output_list(outputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A network's outputs as a list (one tensor, or one per deep-supervision scale)."""
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def optimiser_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gradient_scaler: torch.amp.GradScaler,
    loss_function: Callable,
    data: Any,
    target: Any,
    *,
    device: torch.device,
    precision: str,
    gradient_clip_norm: float,
) -> float:
    """One forward/backward pass in ``precision`` with gradient scaling and clipping; returns the loss.

    ``data`` and ``target`` (a tensor, or one per deep-supervision scale) may still be on the CPU: moving them to
    ``device`` is part of the step.
    """
    data, target = to_device(data, device), to_device(target, device)
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device, precision):
        loss = loss_function(network(data), target)
    gradient_scaler.scale(loss).backward()
    gradient_scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), gradient_clip_norm)
    gradient_scaler.step(optimizer)
    gradient_scaler.update()
    return float(loss.detach())


__all__ = [
    "CPU_VOXELS_PER_STEP",
    "as_output_list",
    "optimiser_step",
    "to_device",
    "training_batch_size",
]
