"""One optimiser step, the same for the training loop and the machine's throughput probes; and its batch size.

``optimiser_step`` is what every training iteration does: batch to the device, forward under autocast in the run's
precision, loss, scaled backward, gradient clipping, optimiser and scaler step, and reading the loss back (which
waits for an asynchronous device). ``autoseg.pipeline.machine_benchmark`` times this very function, so the
machine's measured step cannot drift from the real one.

``training_batch_size`` is the batch a fold trains with: ``--batch-size`` if given, else the plan's through the one CPU
batch rule the planner and the machine benchmark apply too (``autoseg.records.training_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from autoseg.records.plans import Configuration
from autoseg.records.training_batch import device_batch_size, requested_batch_size
from autoseg.utils.precision import autocast_for


def training_batch_size(configuration: Configuration, requested: int | None, device: torch.device) -> int:
    """``requested`` (``--batch-size``), else the plan's batch size as ``device`` runs it (capped on a CPU)."""
    if requested is not None:
        return requested_batch_size(requested)
    return device_batch_size(configuration.batch_size, configuration.patch_size, device=device.type)


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
    "as_output_list",
    "optimiser_step",
    "to_device",
    "training_batch_size",
]
