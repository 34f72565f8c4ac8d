"""The validation pass that closes each epoch: loss and pseudo-Dice counts over validation patches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from autoseg.records.dataset import RawDataset
from autoseg.training.distributed import unwrap_model
from autoseg.training.job import TrainingSettings
from autoseg.training.pseudo_dice import count_overlaps
from autoseg.training.step import as_output_list, to_device
from autoseg.utils.precision import autocast_for


def validation_batches(settings: TrainingSettings, training_steps: int) -> int:
    """``validation_iterations``; for a time-sliced epoch scaled by its share of ``iterations_per_epoch`` (at least 1,
    unless validation is off)."""
    if settings.epoch_seconds is None or settings.validation_iterations == 0:
        return settings.validation_iterations
    share = training_steps / settings.iterations_per_epoch
    return max(1, min(settings.validation_iterations, math.ceil(settings.validation_iterations * share)))


def validate(
    network: torch.nn.Module,
    validation_loader: Iterator[dict],
    loss_function: Callable,
    batches: int,
    precision: str,
    device: torch.device,
    dataset: RawDataset,
    number_of_foreground_outputs: int,
) -> tuple[float, int, torch.Tensor]:
    """Loss and pseudo-Dice counts over ``batches`` validation batches.

    The bare network is used (no DDP gradient sync needed) in training mode, so it returns every deep-supervision
    output and the validation loss is the same quantity as the training loss; instance normalisation has no running
    statistics, so training and evaluation mode compute the same thing.
    """
    model = unwrap_model(network)
    loss_sum, steps, counts = 0.0, 0, None
    with torch.no_grad():
        for _ in range(batches):
            batch = next(validation_loader)
            data = to_device(batch["data"], device)
            target = to_device(batch["target"], device)
            with autocast_for(device, precision):
                outputs = as_output_list(model(data))
                loss = loss_function(outputs if len(outputs) > 1 else outputs[0], target)
            loss_sum += float(loss)
            steps += 1
            full_resolution_target = target[0] if isinstance(target, list) else target
            batch_counts = count_overlaps(
                outputs[0],
                full_resolution_target,
                regions=dataset.regions if dataset.has_regions else None,
                ignore_label=dataset.ignore_label,
            )
            counts = batch_counts if counts is None else counts + batch_counts
    if counts is None:
        counts = torch.zeros((number_of_foreground_outputs, 3), dtype=torch.float64)
    return loss_sum, steps, counts
