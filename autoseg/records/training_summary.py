"""``training_summary.json``: what one fold's training run did, written by rank 0 when the run ends.

The file holds the fields of :class:`TrainingSummary` in their order. Readers (the report, the run's skip rule,
benchmarks) read it through :meth:`TrainingSummary.read`, which tolerates missing keys as older files may lack some.

Example:
    >>> TrainingSummary.from_json({"configuration_name": "3d_fullres", "fold": 0, "epochs_completed": 1000,
    ...                            "best_ema_pseudo_dice": 0.8912}).write(".")
    >>> summary = TrainingSummary.read(TRAINING_SUMMARY_FILE)
    >>> summary.epochs_completed, summary.best_ema_pseudo_dice, summary.after_training
    (1000, 0.8912, {})
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.records.work_folder import TRAINING_SUMMARY_FILE
from autoseg.utils.files import read_json, write_json


@dataclasses.dataclass(frozen=True)
class TrainingSummary:
    """JSON-serialisable summary of a finished (or budget-ended) run, written as ``training_summary.json``."""

    fold_folder: str
    configuration_name: str
    fold: int | str
    epochs_completed: int
    iterations_done: int
    elapsed_seconds: float
    final_train_loss: float | None
    final_val_loss: float | None
    ema_pseudo_dice: float | None
    best_ema_pseudo_dice: float | None
    resumed_from_epoch: int | None
    after_training: dict[str, Any]
    # Distributed runs: every rank's weights_fingerprint at the end, in rank order (all equal when DDP kept the ranks
    # in lock-step; the saved checkpoints hold rank 0's weights).
    weights_sha256_per_rank: list[str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingSummary:
        """The summary in ``data``; a missing key reads as None (``after_training`` as empty)."""
        values = {field.name: data.get(field.name) for field in dataclasses.fields(cls)}
        values["after_training"] = data.get("after_training") or {}
        return cls(**values)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> TrainingSummary:
        return cls.from_json(read_json(path))

    def write(self, fold_folder: str | os.PathLike[str]) -> None:
        """Write ``fold_folder/training_summary.json`` (the fields in their order, indented)."""
        write_json(Path(fold_folder) / TRAINING_SUMMARY_FILE, self)


__all__ = ["TRAINING_SUMMARY_FILE", "TrainingSummary"]
