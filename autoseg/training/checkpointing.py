"""Checkpoints of a training run: what they hold, which one a resumed run starts from, restoring one, and when to write.

The files themselves (weights-only state dicts, random states as tensors, atomic writes) are
``autoseg.records.checkpoint``; this module decides their content from the loop's ``TrainingState``. Everything a
resumed run needs is in ``checkpoint_latest.pt`` (``checkpoint_final.pt`` holds the same at the end).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from autoseg.records import checkpoint as checkpoint_files
from autoseg.training.distributed import unwrap_model
from autoseg.training.job import TrainingJob, TrainingSettings, TrainingState
from autoseg.training.schedule import TrainingProgress


def resume_point(fold_folder: Path) -> Path | None:
    """The checkpoint with the most training done among latest and final (final also holds the full state)."""
    candidates = [
        fold_folder / checkpoint_files.LATEST_CHECKPOINT,
        fold_folder / checkpoint_files.FINAL_CHECKPOINT,
    ]
    best_path, best_iterations = None, -1
    for path in candidates:
        if path.is_file():
            iterations = checkpoint_files.load_checkpoint(path)["progress"]["iterations_done"]
            if iterations > best_iterations:
                best_path, best_iterations = path, iterations
    return best_path


def checkpoint_content(state: TrainingState, job: TrainingJob, settings: TrainingSettings, channels: dict) -> dict:
    """Everything a resumed run (or a prediction) needs: weights, optimiser, scaler, counters, log, random states,
    the configuration and the settings.

    ``network`` holds the weights a prediction uses: the weight average when the run keeps one, whose trained
    weights and update count are then kept too (``training_network``, ``averaged_updates``) for a resumed run."""
    content = {
        "network": unwrap_model(state.model_to_evaluate).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "gradient_scaler": state.gradient_scaler.state_dict(),
        "progress": state.progress.to_dict(),
        "log": state.log,
        "ema_pseudo_dice": state.ema_pseudo_dice,
        "best_ema_pseudo_dice": state.best_ema_pseudo_dice,
        "random_states": checkpoint_files.capture_random_states(),
        "configuration_name": job.configuration_name,
        "configuration": job.configuration.to_json(),
        "fold": str(job.fold),
        "in_channels": channels["in"],
        "out_channels": channels["out"],
        "settings": {key: value for key, value in dataclasses.asdict(settings).items() if value is not None},
    }
    if state.averaged_network is not None:
        content["training_network"] = unwrap_model(state.network).state_dict()
        content["averaged_updates"] = int(state.averaged_network.n_averaged)
    return content


def restore_checkpoint(state: TrainingState, checkpoint: dict, settings: TrainingSettings) -> None:
    """Put a checkpoint's weights, optimiser, scaler, counters, log and random states into ``state``."""
    unwrap_model(state.network).load_state_dict(checkpoint.get("training_network", checkpoint["network"]))
    if state.averaged_network is not None:
        # A run that starts averaging on resume starts its average from the weights it resumes.
        state.averaged_network.module.load_state_dict(checkpoint["network"])
        state.averaged_network.n_averaged.fill_(checkpoint.get("averaged_updates", 0))
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("gradient_scaler"):
        state.gradient_scaler.load_state_dict(checkpoint["gradient_scaler"])
    saved = TrainingProgress.from_dict(checkpoint["progress"])
    # Counters come from the checkpoint; targets (epochs, budget) from the current command, so a run can be extended.
    state.progress = TrainingProgress(
        epochs=None if settings.time_budget_seconds is not None else settings.epochs,
        iterations_per_epoch=settings.iterations_per_epoch,
        time_budget_seconds=settings.time_budget_seconds,
        epoch=saved.epoch,
        iteration_in_epoch=saved.iteration_in_epoch,
        iterations_done=saved.iterations_done,
        elapsed_seconds=saved.elapsed_seconds,
        epoch_seconds=settings.epoch_seconds,
        epoch_started_seconds=saved.epoch_started_seconds if saved.iteration_in_epoch else saved.elapsed_seconds,
    )
    state.log = list(checkpoint["log"])[: saved.epoch]
    state.ema_pseudo_dice = checkpoint.get("ema_pseudo_dice")
    state.best_ema_pseudo_dice = checkpoint.get("best_ema_pseudo_dice")
    checkpoint_files.restore_random_states(checkpoint["random_states"])


class CheckpointPolicy:
    """Writes latest (every N epochs, or after M seconds, or at the end), best (when the EMA improves) and final."""

    def __init__(self, job: TrainingJob, settings: TrainingSettings, channels: dict[str, int]) -> None:
        self.job, self.settings, self.channels = job, settings, channels
        self.last_saved = time.monotonic()

    def save(self, state: TrainingState, name: str) -> None:
        content = checkpoint_content(state, self.job, self.settings, self.channels)
        checkpoint_files.save_checkpoint(self.job.fold_folder / name, content)
        if name in (checkpoint_files.LATEST_CHECKPOINT, checkpoint_files.FINAL_CHECKPOINT):
            self.last_saved = time.monotonic()

    def save_latest_if_stale(self, state: TrainingState) -> None:
        """Mid-epoch, rank 0: write latest when ``checkpoint_every_seconds`` have passed (slow CPU epochs)."""
        stale = time.monotonic() - self.last_saved >= self.settings.checkpoint_every_seconds
        if state.context.is_main_process and stale:
            self.save(state, checkpoint_files.LATEST_CHECKPOINT)

    def latest_is_due(self, state: TrainingState) -> bool:
        return (
            state.progress.finished
            or state.progress.epoch % self.settings.checkpoint_every_epochs == 0
            or time.monotonic() - self.last_saved >= self.settings.checkpoint_every_seconds
        )


__all__ = ["CheckpointPolicy", "checkpoint_content", "restore_checkpoint", "resume_point"]
