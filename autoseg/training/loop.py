"""The training loop of one fold, composed of small parts: sampling, loss, schedule, checkpoints, log, validation.

``train_fold(job, settings)`` runs epochs of ``iterations_per_epoch`` optimiser steps followed by a pass over
validation patches (loss and pseudo-Dice), until the planned epochs are done or the time budget is spent. It is
the same code in one process and under ``torchrun`` (DistributedDataParallel; only rank 0 writes). Everything a
resumed run needs is in ``checkpoint_latest.pt``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.networks import build_network, describe
from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration
from autoseg.records.work_folder import WorkFolder
from autoseg.training.data_loading import (
    deep_supervision_scales,
    forced_foreground_samples,
    make_training_loader,
    make_validation_loader,
)
from autoseg.training.distributed import (
    DistributedContext,
    detect_distributed_context,
    fingerprints_of_all_processes,
    split_batch_size,
    split_forced_samples,
    start_process_group,
    stop_process_group,
    sum_across_processes,
    unwrap_model,
    value_of_main_process,
    weights_fingerprint,
    wrap_model,
)
from autoseg.training.hooks import AfterTrainingHook, after_training
from autoseg.training.losses import build_loss, deep_supervision_weights
from autoseg.training.optimizers import (
    DEFAULT_GRADIENT_CLIP_NORM,
    DEFAULT_INITIAL_LEARNING_RATE,
    DEFAULT_WEIGHT_DECAY,
    OPTIMIZERS,
    set_learning_rate,
)
from autoseg.training.pretrained import load_pretrained_weights
from autoseg.training.progress_plot import draw_progress
from autoseg.training.pseudo_dice import count_overlaps, dice_from_counts, mean_dice
from autoseg.training.schedule import TrainingProgress, poly_learning_rate
from autoseg.training.tracking import fold_result_metrics, fold_tracker
from autoseg.training.training_log import LOG_FILE, update_moving_average, write_log
from autoseg.utils.devices import (
    choose_device,
    enable_fast_kernels,
    make_deterministic,
    make_gradient_scaler,
    seed_everything,
)
from autoseg.utils.files import write_json
from autoseg.utils.precision import autocast_for, resolve_precision
from autoseg.utils.progress import ProgressDisplay, format_duration, progress_display
from autoseg.utils.threads import available_cpus, set_torch_threads

PROGRESS_PLOT = "progress.png"
# Drawing progress.png costs about a second of CPU; short epochs (tiny runs, short time-sliced epochs) redraw it at
# most this often, and the finished run always draws it once more.
PROGRESS_PLOT_INTERVAL_SECONDS = 30.0
TRAINING_SUMMARY = "training_summary.json"


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Every option of a training run; the defaults are the proven recipe (see docs/training.md).

    ``epochs`` is ignored when ``time_budget_seconds`` is set: training then runs until the budget is spent, with the
    learning rate decaying over the budget. A latest checkpoint is written every ``checkpoint_every_epochs`` epochs
    and whenever ``checkpoint_every_seconds`` have passed since the last one. ``precision`` is resolved by
    ``autoseg.utils.precision`` (``auto``: float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32).
    ``batch_size`` None means the plan's, capped on CPU by ``training_batch_size``. With ``epoch_seconds`` an epoch
    also ends after that much time (time-sliced epochs, see ``epoch_seconds_for_budget``), and its validation uses
    ``validation_iterations`` scaled by the share of ``iterations_per_epoch`` it ran.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int = 50
    time_budget_seconds: float | None = None
    epoch_seconds: float | None = None
    loss_name: str = "dice_ce"
    optimizer_name: str = "sgd_nesterov"
    initial_learning_rate: float = DEFAULT_INITIAL_LEARNING_RATE
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    gradient_clip_norm: float = DEFAULT_GRADIENT_CLIP_NORM
    oversample_foreground: float = 0.33
    seed: int = 0
    deterministic: bool = False
    num_workers: int | None = None
    threads: int | None = None
    device: str | None = None
    precision: str = "auto"
    batch_size: int | None = None
    resume: bool = False
    pretrained: str | None = None
    checkpoint_every_epochs: int = 10
    checkpoint_every_seconds: float = 300.0
    after_training_hooks: tuple[str, ...] = ("predict_validation",)
    show_progress_bar: bool = True
    loggers: tuple[str, ...] = ()  # experiment tracking: "tensorboard", "mlflow" (autoseg.training.tracking)


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """What to train: one configuration of one dataset on one fold's cases, written to ``fold_folder``."""

    dataset: RawDataset
    work_folder: WorkFolder
    configuration_name: str
    configuration: Configuration
    fold: int | str
    train_case_ids: tuple[str, ...]
    validation_case_ids: tuple[str, ...]
    preprocessed_folder: Path
    fold_folder: Path
    # Cascade stages only: the previous stage's out-of-fold label maps (see autoseg.training.cascade), made from
    # the previous stage's folds as listed in ``splits`` before training starts.
    previous_stage_folder: Path | None = None
    splits: tuple[dict, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainingComponents:
    """The parts the loop is composed of, as plain functions (the real ones by default; tests may swap them)."""

    build_network: Callable[..., torch.nn.Module]
    describe_network: Callable[[torch.nn.Module], str]
    build_loss: Callable[..., Callable]
    make_training_loader: Callable[..., Iterator[dict]]
    make_validation_loader: Callable[..., Iterator[dict]]
    deep_supervision_scales: Callable[[Configuration], list]
    # Supplied by the pipeline above training (``autoseg.pipeline.validation.training_components``): making a cascade
    # stage's previous-stage inputs, and what runs after training (e.g. ``predict_validation``), need inference.
    prepare_previous_stage: Callable[..., Path] | None = None
    after_training_hooks: Mapping[str, AfterTrainingHook] = dataclasses.field(default_factory=dict)


def default_components() -> TrainingComponents:
    """The networks, losses and loaders of ``autoseg.networks`` and ``autoseg.training``."""

    return TrainingComponents(
        build_network=build_network,
        describe_network=describe,
        build_loss=build_loss,
        make_training_loader=make_training_loader,
        make_validation_loader=make_validation_loader,
        deep_supervision_scales=deep_supervision_scales,
    )


@dataclasses.dataclass
class TrainingState:
    """What the loop mutates; handed to epoch-end callbacks (e.g. to stop early or to inspect the weights)."""

    network: torch.nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    gradient_scaler: torch.amp.GradScaler
    progress: TrainingProgress
    log: list[dict[str, Any]]
    context: DistributedContext
    ema_pseudo_dice: float | None = None
    best_ema_pseudo_dice: float | None = None


EpochCallback = Callable[[TrainingState], None]


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """JSON-serialisable summary of a finished (or budget-ended) run, also written as ``training_summary.json``."""

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


def number_of_input_channels(job: TrainingJob) -> int:
    """Channels of a preprocessed case (read from the ``.npy`` header), plus one per foreground class for the
    cascade, whose input also holds the previous stage's one-hot segmentation."""
    first_case = job.preprocessed_folder / f"{job.train_case_ids[0]}.npy"
    channels = int(np.load(first_case, mmap_mode="r").shape[0])
    if job.configuration.previous_stage:
        channels += len(job.dataset.foreground_labels)
    return channels


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors (or numpy arrays, or lists of them) moved to ``device``."""
    if isinstance(value, (list, tuple)):
        return [to_device(item, device) for item in value]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return value.to(device, non_blocking=True)


def as_output_list(outputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def class_names_of(dataset: RawDataset) -> list[str]:
    """Names of the foreground outputs in channel order (regions or classes), for the log."""
    named = [(name, value) for name, value in dataset.labels.items() if name not in ("background", "ignore")]
    if dataset.has_regions:
        return [name for name, _ in named]
    by_value = {value: name for name, value in named}
    return [by_value.get(value, str(value)) for value in dataset.foreground_labels]


def _resume_point(fold_folder: Path) -> Path | None:
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


def _checkpoint_content(state: TrainingState, job: TrainingJob, settings: TrainingSettings, channels: dict) -> dict:
    return {
        "network": unwrap_model(state.network).state_dict(),
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


def _restore(state: TrainingState, checkpoint: dict, settings: TrainingSettings) -> None:
    unwrap_model(state.network).load_state_dict(checkpoint["network"])
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


def distributed_deep_supervision_weights(number_of_outputs: int) -> list[float]:
    """The usual ``1 / 2^i`` weights, but the lowest output keeps a tiny weight instead of 0.

    DistributedDataParallel requires every parameter to take part in the loss (otherwise it waits forever for
    their gradients, or needs the slower ``find_unused_parameters``); a weight of 1e-6 keeps the coarsest head in
    the graph without changing what is learned.
    """

    weights = list(deep_supervision_weights(number_of_outputs))
    if len(weights) > 1 and weights[-1] == 0:
        weights[-1] = 1e-6
    return weights


def default_number_of_workers(context: DistributedContext) -> int:
    """Background augmentation processes per rank: one per CPU this rank can call its own (container CPU quotas
    included, see ``available_cpus``), at most 8."""
    return max(1, min(8, available_cpus() // context.world_size))


# On CPU a training step of this many voxels (batch x patch) takes ~2-4 s on 2 cores in bfloat16 (6-8 s in float32).
# The plan's batch fills a GPU; on a CPU it would leave too few optimiser steps in any affordable time (HC18 2d:
# 9 x 640x896 is ~65 s per step in float32), and more steps of a smaller batch learn more per second.
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


def _loader_seed(settings: TrainingSettings, context: DistributedContext, resume_point: int, stream: int) -> int:
    """Distinct, reproducible seeds per rank and per (re)start iteration, so a resumed run draws fresh patches."""
    return (settings.seed * 1_000_003 + context.rank * 10_007 + resume_point * 101 + stream) % 2**31


def train_fold(
    job: TrainingJob,
    settings: TrainingSettings,
    *,
    components: TrainingComponents | None = None,
    epoch_end_callbacks: Sequence[EpochCallback] = (),
    log_message: Callable[[str], None] = print,
) -> TrainingResult:
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
            _prepare_previous_stage(job, settings, components, context, device, log_message)
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
) -> TrainingResult:
    say = log_message if context.is_main_process else (lambda _message: None)
    _configure_process(settings, context, device)
    if context.is_main_process:
        job.fold_folder.mkdir(parents=True, exist_ok=True)
    channels = {"in": number_of_input_channels(job), "out": job.dataset.num_output_channels}
    state, resumed_from_epoch = _prepare_state(job, settings, components, context, device, channels, say)
    scales = components.deep_supervision_scales(job.configuration)
    loss_function = _build_loss(job, settings, components, context, len(scales), channels["out"])
    training_loader, validation_loader = _make_loaders(
        job, settings, components, context, scales, state.progress.iterations_done
    )
    state.network = wrap_model(state.network, context, device)
    class_names = class_names_of(job.dataset)
    clock = _RankZeroClock(state.progress, context)
    checkpoints = _CheckpointPolicy(job, settings, channels)
    plot = _ProgressPlot(job.fold_folder / PROGRESS_PLOT)
    try:
        while not state.progress.finished:
            epoch_started = time.monotonic()
            training = _train_one_epoch(
                state, training_loader, loss_function, settings, device, clock, checkpoints.save_latest_if_stale
            )
            validation = _validate(
                state.network, validation_loader, loss_function, _validation_batches(settings, training["steps"]),
                settings.precision, device, job.dataset, len(class_names),
            )
            record, improved = _close_epoch(state, training, validation, class_names, epoch_started, clock)
            if context.is_main_process:
                _write_epoch_outputs(job, state, record, improved, checkpoints, plot, say)
            for callback in epoch_end_callbacks:
                callback(state)
    finally:
        for loader in (training_loader, validation_loader):
            shutdown = getattr(loader, "shutdown", None)
            if callable(shutdown):
                shutdown()
    return _finish(job, settings, components, state, checkpoints, plot, resumed_from_epoch, device, say)


def _prepare_previous_stage(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    device: torch.device,
    log_message: Callable[[str], None],
) -> None:
    """Rank 0 makes the cascade's previous-stage maps (once; they are reused while the previous stage is unchanged);
    the other ranks wait for them."""
    if components.prepare_previous_stage is None:
        raise UserError(
            f"{job.configuration_name} is a cascade stage: train it with `autoseg train` or `autoseg run`, which "
            "make the previous stage's segmentations it learns from."
        )
    if context.is_main_process:
        components.prepare_previous_stage(
            work_folder=job.work_folder,
            configuration_name=job.configuration_name,
            previous_stage=str(job.configuration.previous_stage),
            splits=job.splits,
            target_folder=job.preprocessed_folder,
            device=str(device),
            precision=settings.precision,
            say=log_message,
        )
    if context.enabled:
        torch.distributed.barrier()


def _configure_process(settings: TrainingSettings, context: DistributedContext, device: torch.device) -> None:
    """Threads (``settings.threads``, else the CPUs shared among ranks) and seeds (distinct per rank: DDP copies rank
    0's initial weights)."""
    shared_cpus = max(1, available_cpus() // context.world_size) if device.type == "cpu" else None
    set_torch_threads(settings.threads or shared_cpus)
    if settings.deterministic:
        make_deterministic(settings.seed + context.rank)
    else:
        seed_everything(settings.seed + context.rank)
        enable_fast_kernels(device)


def _prepare_state(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    device: torch.device,
    channels: dict[str, int],
    say: Callable[[str], None],
) -> tuple[TrainingState, int | None]:
    """Network (fresh, pretrained or resumed), optimiser, scaler and counters."""
    network = components.build_network(
        job.configuration, in_channels=channels["in"], out_channels=channels["out"], deep_supervision=True
    ).to(device)
    say(f"network: {components.describe_network(network)}")
    planned_batch = job.configuration.batch_size
    say(f"device: {device}, {settings.precision} arithmetic, batch {settings.batch_size}"
        + (f" (plan: {planned_batch}; smaller on CPU, see --batch-size)" if settings.batch_size < planned_batch else "")
        + (f", {context.world_size} processes" if context.enabled else ""))
    resume_path = _resume_point(job.fold_folder) if settings.resume else None
    if settings.pretrained and resume_path is None:
        # Also with --resume before the first checkpoint: the run starts from scratch, so from the pretrained weights.
        report = load_pretrained_weights(network, settings.pretrained)
        say(f"pretrained weights from {settings.pretrained}: {report.summary()}")
    optimizer = OPTIMIZERS[settings.optimizer_name](
        network.parameters(), learning_rate=settings.initial_learning_rate, weight_decay=settings.weight_decay
    )
    state = TrainingState(
        network=network,
        optimizer=optimizer,
        gradient_scaler=make_gradient_scaler(device, settings.precision),
        progress=TrainingProgress(
            epochs=None if settings.time_budget_seconds is not None else settings.epochs,
            iterations_per_epoch=settings.iterations_per_epoch,
            time_budget_seconds=settings.time_budget_seconds,
            epoch_seconds=settings.epoch_seconds,
        ),
        log=[],
        context=context,
    )
    if not settings.resume:
        return state, None
    if resume_path is None:
        say(f"no checkpoint in {job.fold_folder} to resume from: starting from scratch")
        return state, None
    _restore(state, checkpoint_files.load_checkpoint(resume_path, map_location=device), settings)
    say(
        f"resumed from {resume_path.name} at epoch {state.progress.epoch} "
        f"({state.progress.elapsed_seconds:.0f} s of training done)"
    )
    return state, state.progress.epoch


def _build_loss(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    number_of_outputs: int,
    out_channels: int,
) -> Callable:
    regions = job.dataset.regions if job.dataset.has_regions else None
    return components.build_loss(
        settings.loss_name,
        num_classes=out_channels,
        regions=regions,
        ignore_label=job.dataset.ignore_label,
        batch_dice=job.configuration.batch_dice,
        use_regions=regions is not None,
        deep_supervision_weights=distributed_deep_supervision_weights(number_of_outputs) if context.enabled else None,
    )


def _make_loaders(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    scales: list,
    resume_point: int,
) -> tuple[Iterator[dict], Iterator[dict]]:
    """Training and validation patch streams for this rank's share of the batch."""
    share = split_batch_size(settings.batch_size, context)
    forced = forced_foreground_samples(settings.batch_size, settings.oversample_foreground)
    options = {
        "configuration": job.configuration,
        "batch_size": share,
        "deep_supervision_scales": scales,
        # This rank's share of the global batch's forced samples, as a fraction the loader turns back into a count.
        "oversample_foreground": split_forced_samples(settings.batch_size, forced, context) / share,
        "ignore_label": job.dataset.ignore_label,
    }
    if job.previous_stage_folder is not None:
        options.update(previous_stage_folder=job.previous_stage_folder, foreground_labels=job.dataset.foreground_labels)
    training_workers = default_number_of_workers(context) if settings.num_workers is None else settings.num_workers
    training_loader = components.make_training_loader(
        job.preprocessed_folder,
        list(job.train_case_ids),
        seed=_loader_seed(settings, context, resume_point, 0),
        num_workers=training_workers,
        **options,
    )
    # Validation patches are plain crops (no augmentation): made in this process, they cost milliseconds per batch,
    # while workers of their own would double the processes competing with the network for the CPUs.
    validation_loader = components.make_validation_loader(
        job.preprocessed_folder, list(job.validation_case_ids), seed=_loader_seed(settings, context, 0, 1),
        num_workers=0, **options,
    )
    return training_loader, validation_loader


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
    """Up to ``iterations_per_epoch`` optimiser steps (fewer when the time budget runs out): poly learning rate,
    autocast in ``settings.precision``, gradient clipping. Returns the summed loss, the step count, the last lr, the
    seconds spent and the part of them spent waiting for the loader.

    A resumed mid-epoch checkpoint continues at ``progress.iteration_in_epoch``; ``save_latest_if_stale`` may write
    a mid-epoch checkpoint (rank 0, time-based) after any step."""
    loss_sum, steps, data_wait = 0.0, 0, 0.0
    started = time.perf_counter()
    if state.progress.iteration_in_epoch == 0:
        state.progress.epoch_started_seconds = state.progress.elapsed_seconds
    learning_rate = poly_learning_rate(settings.initial_learning_rate, state.progress.fraction_done)
    state.network.train()
    bar = _epoch_progress_bar(state, settings)
    while not _epoch_is_over(state, settings, steps):
        learning_rate = poly_learning_rate(settings.initial_learning_rate, state.progress.fraction_done)
        set_learning_rate(state.optimizer, learning_rate)
        waiting_since = time.perf_counter()
        batch = next(loader)
        data_wait += time.perf_counter() - waiting_since
        loss_value = _optimiser_step(state, batch, loss_function, settings, device)
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


def _optimiser_step(
    state: TrainingState, batch: dict, loss_function: Callable, settings: TrainingSettings, device: torch.device
) -> float:
    """One forward/backward pass in ``settings.precision`` with gradient scaling and clipping; returns the loss."""
    data, target = to_device(batch["data"], device), to_device(batch["target"], device)
    state.optimizer.zero_grad(set_to_none=True)
    with autocast_for(device, settings.precision):
        loss = loss_function(state.network(data), target)
    state.gradient_scaler.scale(loss).backward()
    state.gradient_scaler.unscale_(state.optimizer)
    torch.nn.utils.clip_grad_norm_(state.network.parameters(), settings.gradient_clip_norm)
    state.gradient_scaler.step(state.optimizer)
    state.gradient_scaler.update()
    return float(loss.detach())


def _validation_batches(settings: TrainingSettings, training_steps: int) -> int:
    """``validation_iterations``; for a time-sliced epoch scaled by its share of ``iterations_per_epoch`` (at least 1,
    unless validation is off)."""
    if settings.epoch_seconds is None or settings.validation_iterations == 0:
        return settings.validation_iterations
    share = training_steps / settings.iterations_per_epoch
    return max(1, min(settings.validation_iterations, math.ceil(settings.validation_iterations * share)))


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


class _CheckpointPolicy:
    """Writes latest (every N epochs, or after M seconds, or at the end), best (when the EMA improves) and final."""

    def __init__(self, job: TrainingJob, settings: TrainingSettings, channels: dict[str, int]) -> None:
        self.job, self.settings, self.channels = job, settings, channels
        self.last_saved = time.monotonic()

    def save(self, state: TrainingState, name: str) -> None:
        content = _checkpoint_content(state, self.job, self.settings, self.channels)
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


class _ProgressPlot:
    """``progress.png`` of the fold, redrawn when ``PROGRESS_PLOT_INTERVAL_SECONDS`` have passed (or when forced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_drawn: float | None = None

    def draw(self, log: list[dict[str, Any]], *, force: bool) -> None:
        now = time.monotonic()
        if not log or (not force and self.last_drawn is not None
                       and now - self.last_drawn < PROGRESS_PLOT_INTERVAL_SECONDS):
            return
        draw_progress(self.path, log)
        self.last_drawn = time.monotonic()


def _write_epoch_outputs(
    job: TrainingJob,
    state: TrainingState,
    record: dict[str, Any],
    improved: bool,
    checkpoints: _CheckpointPolicy,
    plot: _ProgressPlot,
    say: Callable[[str], None],
) -> None:
    """Rank 0 only: log line, log file, progress plot (when due) and due checkpoints."""
    if record["train_loss"] is not None and not math.isfinite(record["train_loss"]):
        say(f"epoch {record['epoch']}: the training loss is not finite; check the labels and the learning rate")
    write_log(job.fold_folder / LOG_FILE, state.log)
    plot.draw(state.log, force=False)
    say(_epoch_line(record, seconds_left=state.progress.seconds_left))
    if checkpoints.latest_is_due(state):
        checkpoints.save(state, checkpoint_files.LATEST_CHECKPOINT)
    if improved:
        checkpoints.save(state, checkpoint_files.BEST_CHECKPOINT)


def _run_after_training_hooks(
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
        progress=settings.show_progress_bar,
    )
    for name, outcome in after.items():
        if isinstance(outcome, dict) and "failed" in outcome:
            say(f"after training, {name} failed ({outcome['failed']}); the trained model is unaffected")
        elif isinstance(outcome, dict) and outcome.get("mean_dice") is not None:
            say(f"validation cases ({name}): mean Dice {outcome['mean_dice']:.4f}")
    return after


def _finish(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    state: TrainingState,
    checkpoints: _CheckpointPolicy,
    plot: _ProgressPlot,
    resumed_from_epoch: int | None,
    device: torch.device,
    say: Callable[[str], None],
) -> TrainingResult:
    """Final checkpoint, after-training hooks (validation prediction) and the run summary."""
    after: dict[str, Any] = {}
    main = state.context.is_main_process
    rank_fingerprints = None
    if state.context.enabled:
        rank_fingerprints = fingerprints_of_all_processes(weights_fingerprint(state.network), state.context)
        if len(set(rank_fingerprints)) > 1:
            say(f"warning: the {state.context.world_size} processes ended with different weights "
                f"(weights_sha256_per_rank in {TRAINING_SUMMARY}); the checkpoints hold rank 0's")
    if main:
        checkpoints.save(state, checkpoint_files.FINAL_CHECKPOINT)
        plot.draw(state.log, force=True)
        say(f"training finished after {state.progress.epoch} epochs, {state.progress.elapsed_seconds:.0f} s")
        after = _run_after_training_hooks(job, settings, components, device, say)
    last = state.log[-1] if state.log else {}
    result = TrainingResult(
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
        write_json(job.fold_folder / TRAINING_SUMMARY, result)
    return result


def _validate(
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


def _epoch_line(record: dict[str, Any], *, seconds_left: float | None) -> str:
    """The epoch's one line on standard output (a log file of a run reads as one line per epoch)."""
    dice = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} -" for name, value in
                     record["pseudo_dice"].items())
    train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
    val_loss = "-" if record["val_loss"] is None else f"{record['val_loss']:.4f}"
    return (
        f"epoch {record['epoch']}: train loss {train_loss}, val loss {val_loss}, pseudo-Dice [{dice}], "
        f"EMA {record['ema_pseudo_dice']:.4f}, lr {record['learning_rate']:.2e}, {record['epoch_seconds']:.1f} s, "
        f"ETA {'-' if seconds_left is None else format_duration(seconds_left)}"
    )


__all__ = [
    "TrainingComponents",
    "TrainingJob",
    "TrainingResult",
    "TrainingSettings",
    "TrainingState",
    "default_components",
    "train_fold",
]
