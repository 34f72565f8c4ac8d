"""The training loop of one fold: epochs of optimiser steps, each closed by a validation pass, until done.

``train_fold(job, settings)`` runs epochs of ``iterations_per_epoch`` optimiser steps followed by a pass over
validation patches (loss and pseudo-Dice), until the planned epochs are done or the time budget is spent. It is
the same code in one process and under ``torchrun`` (DistributedDataParallel; only rank 0 writes). The parts it is
composed of: ``job`` (what to train, with which settings), ``setup`` (network, optimiser, loss, loaders),
``step`` (one optimiser step), ``validation_pass``, ``epoch_report`` (log, plot), ``checkpointing`` (everything a
resumed run needs is in ``checkpoint_latest.pt``) and ``end_of_run`` (final checkpoint, hooks, summary).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from autoseg.records.training_summary import TrainingSummary
from autoseg.training.checkpointing import CheckpointPolicy
from autoseg.training.distributed import (
    DistributedContext,
    detect_distributed_context,
    start_process_group,
    stop_process_group,
    sum_across_processes,
    unwrap_model,
    value_of_main_process,
    wrap_model,
)
from autoseg.training.end_of_run import finish_run
from autoseg.training.epoch_report import PROGRESS_PLOT, ProgressPlot, write_epoch_outputs
from autoseg.training.job import (
    EpochCallback,
    TrainingComponents,
    TrainingJob,
    TrainingSettings,
    TrainingState,
    default_components,
)
from autoseg.training.optimizers import set_learning_rate
from autoseg.training.pseudo_dice import dice_from_counts, mean_dice
from autoseg.training.schedule import TrainingProgress, learning_rate_at
from autoseg.training.setup import (
    build_loss_function,
    class_names_of,
    configure_process,
    make_loaders,
    number_of_input_channels,
    prepare_previous_stage,
    prepare_state,
)
from autoseg.training.step import optimiser_step, training_batch_size
from autoseg.training.tracking import fold_result_metrics, fold_tracker
from autoseg.training.training_log import update_moving_average
from autoseg.training.validation_pass import validate, validation_batches
from autoseg.utils.devices import choose_device
from autoseg.utils.precision import resolve_precision
from autoseg.utils.progress import ProgressDisplay, progress_display


def train_fold(
    job: TrainingJob,
    settings: TrainingSettings,
    *,
    components: TrainingComponents | None = None,
    epoch_end_callbacks: Sequence[EpochCallback] = (),
    log_message: Callable[[str], None] = print,
) -> TrainingSummary:
    """Train one fold; see the module docstring. Returns the run's summary (rank 0 also writes it)."""
    components = components or default_components()
    context = detect_distributed_context()
    device = choose_device(settings.device, local_rank=context.local_rank)
    settings = dataclasses.replace(
        settings,
        precision=resolve_precision(settings.precision, device),
        batch_size=training_batch_size(job.configuration, settings.batch_size, device),
    )
    started_process_group = context.enabled and not torch.distributed.is_initialized()
    start_process_group(context, device)
    try:
        if job.previous_stage_folder is not None:
            prepare_previous_stage(job, settings, components, context, device, log_message)
        with fold_tracker(job, settings, context, device, say=log_message) as tracker:
            callbacks = [tracker.log_latest_epoch, *epoch_end_callbacks]  # tracked before a callback can stop the run
            result = _train(job, settings, components, context, device, callbacks, log_message)
            tracker.log_final(fold_result_metrics(result), step=result.epochs_completed)
        if started_process_group:
            torch.distributed.barrier()  # every rank done with the group before any tears it down (not after a failure)
        return result
    finally:
        if started_process_group:
            stop_process_group()


def _train(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    device: torch.device,
    epoch_end_callbacks: Sequence[EpochCallback],
    log_message: Callable[[str], None],
) -> TrainingSummary:
    say = log_message if context.is_main_process else (lambda _message: None)
    configure_process(settings, context, device)
    if context.is_main_process:
        job.fold_folder.mkdir(parents=True, exist_ok=True)
    channels = {"in": number_of_input_channels(job), "out": job.dataset.num_output_channels}
    state, resumed_from_epoch = prepare_state(job, settings, components, context, device, channels, say)
    scales = components.deep_supervision_scales(job.configuration)
    loss_function = build_loss_function(job, settings, components, context, len(scales), channels["out"])
    training_loader, validation_loader = make_loaders(
        job, settings, components, context, scales, state.progress.iterations_done, device
    )
    state.network = wrap_model(state.network, context, device)
    class_names = class_names_of(job.dataset)
    clock = _RankZeroClock(state.progress, context)
    checkpoints = CheckpointPolicy(job, settings, channels)
    plot = ProgressPlot(job.fold_folder / PROGRESS_PLOT)
    try:
        while not state.progress.finished:
            epoch_started = time.monotonic()
            training = _train_one_epoch(
                state, training_loader, loss_function, settings, device, clock, checkpoints.save_latest_if_stale
            )
            validation = validate(
                state.model_to_evaluate, validation_loader, loss_function,
                validation_batches(settings, training["steps"]), settings.precision, device, job.dataset,
                len(class_names),
            )
            record, improved = _close_epoch(state, training, validation, class_names, epoch_started, clock)
            if context.is_main_process:
                write_epoch_outputs(job, state, record, improved, checkpoints, plot, say)
            for callback in epoch_end_callbacks:
                callback(state)
    finally:
        for loader in (training_loader, validation_loader):
            shutdown = getattr(loader, "shutdown", None)
            if callable(shutdown):
                shutdown()
    return finish_run(job, settings, components, state, checkpoints, plot, resumed_from_epoch, device, say)


class _RankZeroClock:
    """Training time across resumes, as rank 0 measures it: every rank must use one clock, or time-based learning
    rates (and stop decisions) would drift apart between ranks."""

    def __init__(self, progress: TrainingProgress, context: DistributedContext) -> None:
        self.progress = progress
        self.context = context
        self.started = time.monotonic()
        self.elapsed_at_start = progress.elapsed_seconds

    def tick(self) -> None:
        local_elapsed = self.elapsed_at_start + (time.monotonic() - self.started)
        self.progress.elapsed_seconds = value_of_main_process(local_elapsed, self.context)


def _train_one_epoch(
    state: TrainingState,
    loader: Iterator[dict],
    loss_function: Callable,
    settings: TrainingSettings,
    device: torch.device,
    clock: _RankZeroClock,
    save_latest_if_stale: Callable[[TrainingState], None],
) -> dict[str, float]:
    """Up to ``iterations_per_epoch`` optimiser steps (fewer when the time budget runs out): the schedule's learning
    rate, autocast in ``settings.precision``, gradient clipping, the weight average's update. Returns the summed
    loss, the step count, the last lr, the seconds spent and the part of them spent waiting for the loader.

    A resumed mid-epoch checkpoint continues at ``progress.iteration_in_epoch``; ``save_latest_if_stale`` may write
    a mid-epoch checkpoint (rank 0, time-based) after any step."""
    loss_sum, steps, data_wait = 0.0, 0, 0.0
    started = time.perf_counter()
    if state.progress.iteration_in_epoch == 0:
        state.progress.epoch_started_seconds = state.progress.elapsed_seconds
    learning_rate = _learning_rate(state, settings)
    state.network.train()
    bar = _epoch_progress_bar(state, settings)
    while not _epoch_is_over(state, settings, steps):
        learning_rate = _learning_rate(state, settings)
        set_learning_rate(state.optimizer, learning_rate)
        waiting_since = time.perf_counter()
        batch = next(loader)
        data_wait += time.perf_counter() - waiting_since
        loss_value = optimiser_step(
            state.network, state.optimizer, state.gradient_scaler, loss_function, batch["data"], batch["target"],
            device=device, precision=settings.precision, gradient_clip_norm=settings.gradient_clip_norm,
        )
        if state.averaged_network is not None:
            state.averaged_network.update_parameters(unwrap_model(state.network))
        loss_sum, steps = loss_sum + loss_value, steps + 1
        state.progress.iterations_done += 1
        state.progress.iteration_in_epoch += 1
        clock.tick()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{learning_rate:.2e}")
        if state.progress.iteration_in_epoch < settings.iterations_per_epoch:
            save_latest_if_stale(state)
    bar.close()
    state.progress.iteration_in_epoch = 0
    seconds = time.perf_counter() - started
    return {"loss_sum": loss_sum, "steps": steps, "learning_rate": learning_rate, "seconds": seconds,
            "data_wait_seconds": data_wait}


def _learning_rate(state: TrainingState, settings: TrainingSettings) -> float:
    return learning_rate_at(
        settings.initial_learning_rate, state.progress.fraction_done,
        schedule=settings.schedule, warmup_fraction=settings.warmup_fraction,
    )


def _epoch_is_over(state: TrainingState, settings: TrainingSettings, steps: int) -> bool:
    """All of the epoch's iterations are done, the time budget is spent, or (after at least one step, so that every
    epoch makes progress) the time slice of a time-sliced epoch is over."""
    if state.progress.iteration_in_epoch >= settings.iterations_per_epoch:
        return True
    if settings.time_budget_seconds is not None and state.progress.finished:
        return True
    return bool(steps) and state.progress.epoch_time_over


def _epoch_progress_bar(state: TrainingState, settings: TrainingSettings) -> ProgressDisplay:
    """The per-epoch bar (rank 0 only, unless switched off); open-ended for time-sliced epochs. Not shown in a log
    file, where the epoch's line says it all."""
    return progress_display(
        total=None if settings.epoch_seconds else settings.iterations_per_epoch,
        initial=state.progress.iteration_in_epoch,
        description=f"epoch {state.progress.epoch}",
        unit="it",
        enabled=state.context.is_main_process and settings.show_progress_bar,
        leave=False,
        lines_in_logs=False,
    )


def _close_epoch(
    state: TrainingState,
    training: dict[str, float],
    validation: tuple[float, int, torch.Tensor],
    class_names: list[str],
    epoch_started: float,
    clock: _RankZeroClock,
) -> tuple[dict[str, Any], bool]:
    """Sum the epoch's numbers over ranks, update the pseudo-Dice moving average, append the log record."""
    validation_loss_sum, validation_steps, overlap_counts = validation
    local_sums = [training["loss_sum"], training["steps"], validation_loss_sum, validation_steps]
    train_loss_sum, train_steps, validation_loss_sum, validation_steps, *flat_counts = sum_across_processes(
        [*local_sums, *overlap_counts.flatten().tolist()], state.context
    )
    dice = dice_from_counts(torch.tensor(flat_counts, dtype=torch.float64).view(-1, 3))
    state.ema_pseudo_dice = update_moving_average(state.ema_pseudo_dice, mean_dice(dice))
    improved = state.best_ema_pseudo_dice is None or state.ema_pseudo_dice > state.best_ema_pseudo_dice
    if improved:
        state.best_ema_pseudo_dice = state.ema_pseudo_dice
    epoch = state.progress.epoch
    state.progress.epoch += 1
    clock.tick()
    record = {
        "epoch": epoch,
        "train_loss": train_loss_sum / train_steps if train_steps else None,
        "val_loss": validation_loss_sum / validation_steps if validation_steps else None,
        "pseudo_dice": dict(zip(class_names, dice, strict=True)),
        "mean_pseudo_dice": mean_dice(dice),
        "ema_pseudo_dice": state.ema_pseudo_dice,
        "learning_rate": training["learning_rate"],
        "epoch_seconds": time.monotonic() - epoch_started,
        # This rank's training steps only (no validation), and the part of it spent waiting for augmented batches.
        "train_seconds": training["seconds"],
        "data_wait_seconds": training["data_wait_seconds"],
        "iterations": int(train_steps / state.context.world_size),
        "elapsed_seconds": state.progress.elapsed_seconds,
    }
    state.log.append(record)
    return record, improved


__all__ = ["train_fold"]
