"""The time budget as the planner sees it: seconds left for training, the machine's measured throughput, and how
much of the labels survives a coarser grid (see ``autoseg.planning.compute``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

from autoseg.fingerprint.resolution import round_trip_dice
from autoseg.pipeline.machine_benchmark import machine_throughput
from autoseg.pipeline.schedule import AFTER_TRAINING_SHARE
from autoseg.planning.compute import ComputeBudget
from autoseg.planning.step_cost import step_work
from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import Fingerprint
from autoseg.records.plans import Configuration
from autoseg.training.loop import CPU_VOXELS_PER_STEP, training_batch_size

PREPROCESSING_SHARE = 0.05  # of the budget left at planning time, expected for preprocessing (corrected later)

ComputeFor = Callable[[RawDataset, Fingerprint], ComputeBudget]  # (dataset, fingerprint) -> the budget to plan for


def compute_budget_for(device: torch.device, precision: str, *, budget_seconds: float, deadline: float,
                       say: Callable[[str], None] = print) -> ComputeFor:
    """What ``plan_dataset`` calls, once the dataset is fingerprinted, to learn the budget it plans for.

    ``deadline`` is the ``time.monotonic()`` at which the whole run must be done; the training share is what is
    left of it after the throughput measurement, less preprocessing and the after-training share.
    """

    def compute_for(dataset: RawDataset, fingerprint: Fingerprint) -> ComputeBudget:
        model = machine_throughput(device, precision, say=say)
        seconds_left = deadline - time.monotonic()

        def seconds_per_iteration(name: str, configuration: dict) -> float:
            record = Configuration.from_json(name, configuration)
            work = step_work(record, batch_size=training_batch_size(record, None, device),
                             in_channels=dataset.num_channels, out_channels=dataset.num_output_channels,
                             precision=model.key["precision"])
            return model.seconds_per_iteration(work)

        training = max(0.0, seconds_left) * (1 - AFTER_TRAINING_SHARE - PREPROCESSING_SHARE)
        return ComputeBudget(
            training_seconds=training, seconds_per_iteration=seconds_per_iteration, device=device.type,
            label_round_trip=functools.partial(round_trip_dice, dataset, is_2d=bool(fingerprint.is_2d)),
            max_voxels_per_step=CPU_VOXELS_PER_STEP if device.type == "cpu" else None, budget_seconds=budget_seconds,
        )

    return compute_for
