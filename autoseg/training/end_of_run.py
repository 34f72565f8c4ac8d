"""The end of a training run: final checkpoint, after-training hooks (validation prediction) and
``training_summary.json``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.training_summary import TRAINING_SUMMARY_FILE, TrainingSummary
from autoseg.training.checkpointing import CheckpointPolicy
from autoseg.training.distributed import fingerprints_of_all_processes, weights_fingerprint
from autoseg.training.epoch_report import ProgressPlot
from autoseg.training.hooks import after_training
from autoseg.training.job import TrainingComponents, TrainingJob, TrainingSettings, TrainingState


def run_after_training_hooks(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    device: torch.device,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The named after-training hooks (validation prediction), each outcome said in one line."""
    if not settings.after_training_hooks:
        return {}
    after = after_training(
        job.fold_folder,
        hooks=settings.after_training_hooks,
        available=components.after_training_hooks,
        work_folder=job.work_folder,
        configuration_name=job.configuration_name,
        fold=job.fold,
        validation_case_ids=job.validation_case_ids,
        device=str(device),
        precision=settings.precision,
        mirroring=settings.validation_mirroring,
        progress=settings.show_progress_bar,
    )
    for name, outcome in after.items():
        if isinstance(outcome, dict) and "failed" in outcome:
            say(f"after training, {name} failed ({outcome['failed']}); the trained model is unaffected")
        elif isinstance(outcome, dict) and outcome.get("mean_dice") is not None:
            unmirrored = " (without test-time mirroring)" if outcome.get("test_time_mirroring") is False else ""
            say(f"validation cases ({name}): mean Dice {outcome['mean_dice']:.4f}{unmirrored}")
    return after


def finish_run(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    state: TrainingState,
    checkpoints: CheckpointPolicy,
    plot: ProgressPlot,
    resumed_from_epoch: int | None,
    device: torch.device,
    say: Callable[[str], None],
) -> TrainingSummary:
    """Final checkpoint, after-training hooks (validation prediction) and the run summary."""
    after: dict[str, Any] = {}
    main = state.context.is_main_process
    rank_fingerprints = None
    if state.context.enabled:
        rank_fingerprints = fingerprints_of_all_processes(weights_fingerprint(state.network), state.context)
        if len(set(rank_fingerprints)) > 1:
            say(f"warning: the {state.context.world_size} processes ended with different weights "
                f"(weights_sha256_per_rank in {TRAINING_SUMMARY_FILE}); the checkpoints hold rank 0's")
    if main:
        checkpoints.save(state, checkpoint_files.FINAL_CHECKPOINT)
        plot.draw(state.log, force=True)
        say(f"training finished after {state.progress.epoch} epochs, {state.progress.elapsed_seconds:.0f} s")
        after = run_after_training_hooks(job, settings, components, device, say)
    last = state.log[-1] if state.log else {}
    result = TrainingSummary(
        fold_folder=str(job.fold_folder),
        configuration_name=job.configuration_name,
        fold=job.fold,
        epochs_completed=state.progress.epoch,
        iterations_done=state.progress.iterations_done,
        elapsed_seconds=state.progress.elapsed_seconds,
        final_train_loss=last.get("train_loss"),
        final_val_loss=last.get("val_loss"),
        ema_pseudo_dice=state.ema_pseudo_dice,
        best_ema_pseudo_dice=state.best_ema_pseudo_dice,
        resumed_from_epoch=resumed_from_epoch,
        after_training=after,
        weights_sha256_per_rank=rank_fingerprints,
    )
    if main:
        result.write(job.fold_folder)
    return result
