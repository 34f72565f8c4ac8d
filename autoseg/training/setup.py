"""Everything a training run assembles before its first step: the process (threads, seeds), the cascade's inputs,
the network, optimiser and counters (fresh, pretrained or resumed), the loss and the patch loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from autoseg.errors import UserError
from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.dataset import RawDataset
from autoseg.records.preprocessed_case import PreprocessedCase
from autoseg.training.augmentation import augmentation_preset
from autoseg.training.batch_workers import default_number_of_workers
from autoseg.training.checkpointing import restore_checkpoint, resume_point
from autoseg.training.distributed import DistributedContext, split_batch_size, split_forced_samples
from autoseg.training.job import TrainingComponents, TrainingJob, TrainingSettings, TrainingState
from autoseg.training.losses import deep_supervision_weights
from autoseg.training.optimizers import OPTIMIZERS
from autoseg.training.patch_sampling import forced_foreground_samples
from autoseg.training.pretrained import load_pretrained_weights
from autoseg.training.schedule import TrainingProgress
from autoseg.training.weight_averaging import make_weight_average
from autoseg.utils.devices import enable_fast_kernels, make_deterministic, make_gradient_scaler, seed_everything
from autoseg.utils.threads import available_cpus, set_torch_threads


def number_of_input_channels(job: TrainingJob) -> int:
    """Channels of a preprocessed case (read from the array's header), plus one per foreground class for the
    cascade, whose input also holds the previous stage's one-hot segmentation."""
    channels = int(PreprocessedCase.at(job.preprocessed_folder, job.train_case_ids[0]).open_image().shape[0])
    if job.configuration.previous_stage:
        channels += len(job.dataset.foreground_labels)
    return channels


def class_names_of(dataset: RawDataset) -> list[str]:
    """Names of the foreground outputs in channel order (regions or classes), for the log."""
    named = [(name, value) for name, value in dataset.labels.items() if name not in ("background", "ignore")]
    if dataset.has_regions:
        return [name for name, _ in named]
    by_value = {value: name for name, value in named}
    return [by_value.get(value, str(value)) for value in dataset.foreground_labels]


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


def loader_seed(settings: TrainingSettings, context: DistributedContext, start_iteration: int, stream: int) -> int:
    """Distinct, reproducible seeds per rank and per (re)start iteration, so a resumed run draws fresh patches."""
    return (settings.seed * 1_000_003 + context.rank * 10_007 + start_iteration * 101 + stream) % 2**31


def prepare_previous_stage(
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


def configure_process(settings: TrainingSettings, context: DistributedContext, device: torch.device) -> None:
    """Threads (``settings.threads``, else the CPUs shared among ranks) and seeds (distinct per rank: DDP copies rank
    0's initial weights)."""
    shared_cpus = max(1, available_cpus() // context.world_size) if device.type == "cpu" else None
    set_torch_threads(settings.threads or shared_cpus)
    if settings.deterministic:
        make_deterministic(settings.seed + context.rank)
    else:
        seed_everything(settings.seed + context.rank)
        enable_fast_kernels(device)


def prepare_state(
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
    resume_path = resume_point(job.fold_folder) if settings.resume else None
    if settings.pretrained and resume_path is None:
        # Also with --resume before the first checkpoint: the run starts from scratch, so from the pretrained weights.
        report = load_pretrained_weights(network, settings.pretrained)
        say(f"pretrained weights from {settings.pretrained}: {report.summary()}")
    optimizer = OPTIMIZERS[settings.optimizer_name](
        network.parameters(), learning_rate=settings.initial_learning_rate, weight_decay=settings.weight_decay,
        momentum=settings.momentum,
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
        averaged_network=(
            make_weight_average(network, settings.weight_averaging_decay) if settings.weight_averaging_decay else None
        ),
    )
    if not settings.resume:
        return state, None
    if resume_path is None:
        say(f"no checkpoint in {job.fold_folder} to resume from: starting from scratch")
        return state, None
    restore_checkpoint(state, checkpoint_files.load_checkpoint(resume_path, map_location=device), settings)
    say(
        f"resumed from {resume_path.name} at epoch {state.progress.epoch} "
        f"({state.progress.elapsed_seconds:.0f} s of training done)"
    )
    return state, state.progress.epoch


def build_loss_function(
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


def make_loaders(
    job: TrainingJob,
    settings: TrainingSettings,
    components: TrainingComponents,
    context: DistributedContext,
    scales: list,
    start_iteration: int,
    device: torch.device,
) -> tuple[Iterator[dict], Iterator[dict]]:
    """Training and validation patch streams for this rank's share of the batch (augmented in background workers
    on an accelerator, in line on CPU: ``default_number_of_workers``)."""
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
    augmentation = augmentation_preset(settings.augmentation)
    if job.previous_stage_folder is not None:
        options.update(previous_stage_folder=job.previous_stage_folder, foreground_labels=job.dataset.foreground_labels)
    training_workers = (default_number_of_workers(context, device.type) if settings.num_workers is None
                        else settings.num_workers)
    training_loader = components.make_training_loader(
        job.preprocessed_folder,
        list(job.train_case_ids),
        seed=loader_seed(settings, context, start_iteration, 0),
        num_workers=training_workers,
        augmentation=augmentation,
        **options,
    )
    # Validation patches are plain crops (no augmentation): made in this process, they cost milliseconds per batch,
    # while workers of their own would double the processes competing with the network for the CPUs.
    validation_loader = components.make_validation_loader(
        job.preprocessed_folder, list(job.validation_case_ids), seed=loader_seed(settings, context, 0, 1),
        num_workers=0, **options,
    )
    return training_loader, validation_loader
