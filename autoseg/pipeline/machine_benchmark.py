"""Measure this machine's training throughput on a few small probe networks, fit the model, cache it per machine.

``measure_throughput(device, precision)`` times real training steps (the loop's loss, optimiser, gradient clipping
and autocast) of ``PROBES``: 2D and 3D, plain and residual-encoder U-Nets with the planner's feature widths, at a
few patch and batch sizes; and the training loader's real sampling and augmentation pipeline on synthetic
preprocessed cases of each probe's shape, in one thread as a loader worker runs it. The fit is
``autoseg.planning.step_cost.fit_throughput_model``; the formula and how the augmentation is paid on CPU and GPU are
in that module's docstring; how long the measurement takes is in docs/planning.md.

``machine_throughput(device, precision)`` returns the model cached in ``~/.cache/autoseg/throughput/<key>.json``
(``$XDG_CACHE_HOME`` respected) when it was measured under the same key (CPU model, usable CPUs, device, torch
version, precision, torch threads, probe set), and measures and caches it otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.flop_counter import FlopCounterMode

from autoseg.inference.sliding_window import tile_starts
from autoseg.networks import build_network
from autoseg.planning.presets import PRESETS
from autoseg.planning.step_cost import (
    ProbeMeasurement,
    ThroughputModel,
    fit_throughput_model,
    key_hash,
    step_work,
)
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration, Plans
from autoseg.records.training_batch import device_batch_size
from autoseg.training.augmentation import AugmentationSettings, sampled_patch_size
from autoseg.training.batch_workers import default_number_of_workers
from autoseg.training.data_loading import deep_supervision_scales, make_training_loader
from autoseg.training.distributed import DistributedContext
from autoseg.training.losses import build_loss
from autoseg.training.optimizers import DEFAULT_GRADIENT_CLIP_NORM, OPTIMIZERS
from autoseg.training.step import optimiser_step
from autoseg.utils.devices import enable_fast_kernels, make_gradient_scaler
from autoseg.utils.files import read_json, write_json
from autoseg.utils.precision import autocast_for, resolve_precision
from autoseg.utils.threads import available_cpus, set_torch_threads

# Bumped whenever the probes, the way they are timed or the way their work is counted change, so that cached models
# are measured again (5: a cost per convolution layer; 4: 16-feature and full-sized probes; 3: large allocations
# counted in the training precision; 2 was a trial probe set).
PROBE_SET_VERSION = 5
PROBE_OUT_CHANNELS = 3  # background + two classes, as Hippocampus
# The median of 5 steps after 2 untimed ones: fewer let two measurements of the same probes on the same idle machine
# differ enough to tilt the fit (docs/planning.md).
WARMUP_STEPS = 2
TIMED_STEPS = 5
AUGMENTED_SAMPLES = 24  # per probe: enough samples that the random choice of rotation/scaling averages out
# On an accelerator the CPU-sized probes would measure kernel-launch latency, not throughput: their batches grow.
ACCELERATOR_BATCH_FACTOR = 8
BUSY_CPUS = 0.3  # CPUs' worth of other processes' work above which a CPU measurement is flagged
LARGE_TENSOR_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB), like a large training tensor


@dataclasses.dataclass(frozen=True)
class Probe:
    """A small U-Net as the planner would build it (``stages`` stages, 32 features doubling), at one patch/batch."""

    name: str
    dimension: int
    stages: int
    preset: str  # "default" (plain U-Net) or "resenc-m" (residual encoder)
    patch_size: tuple[int, ...]
    batch_size: int
    features: int = 32  # in the first stage, doubling per stage


# Chosen to span what plans contain (plain and residual, 4-6 stages, FLOPs per activation element from 0.8 to 3.4)
# while a step stays within about half a second on 2 CPU cores; each dimension has one network at two batch sizes,
# which separates the fixed cost of a step from the cost per sample. The 16-feature networks are the narrowed ones
# time budgets plan (memory-bound: without them the fit gives the per-activation cost 0 and predicted those plans
# 20-44 % too fast), and one patch per dimension is as large as a full plan's sample (docs/planning.md).
PROBES: tuple[Probe, ...] = (
    Probe("3d plain 32^3 x1", 3, 4, "default", (32, 32, 32), 1),
    Probe("3d plain 32^3 x2", 3, 4, "default", (32, 32, 32), 2),
    Probe("3d plain 32x40x32 x2", 3, 4, "default", (32, 40, 32), 2),
    Probe("3d resenc 32^3 x1", 3, 4, "resenc-m", (32, 32, 32), 1),
    Probe("3d plain 5-stage 32x48x32 x1", 3, 5, "default", (32, 48, 32), 1),
    Probe("2d plain 128^2 x2", 2, 5, "default", (128, 128), 2),
    Probe("2d plain 128^2 x4", 2, 5, "default", (128, 128), 4),
    Probe("2d plain 6-stage 192^2 x1", 2, 6, "default", (192, 192), 1),
    Probe("2d resenc 128^2 x2", 2, 5, "resenc-m", (128, 128), 2),
    Probe("2d plain 4-stage 64^2 x8", 2, 4, "default", (64, 64), 8),
    Probe("3d plain 16f 40x56x40 x2", 3, 4, "default", (40, 56, 40), 2, 16),
    Probe("3d plain 16f 32^3 x2", 3, 4, "default", (32, 32, 32), 2, 16),
    Probe("3d plain 40x56x40 x1", 3, 4, "default", (40, 56, 40), 1),
    Probe("2d plain 16f 6-stage 160x224 x4", 2, 6, "default", (160, 224), 4, 16),
    Probe("2d plain 16f 4-stage 56x40 x64", 2, 4, "default", (56, 40), 64, 16),
    Probe("2d plain 5-stage 256^2 x2", 2, 5, "default", (256, 256), 2),
)


def probe_configuration(probe: Probe, *, batch_factor: int = 1) -> Configuration:
    """The probe as a plan configuration: kernels 3, strides 2 after the first stage, the preset's blocks."""
    preset = PRESETS[probe.preset]
    cap = 320 if probe.dimension == 3 else 512
    stages, dimension = probe.stages, probe.dimension
    network = {
        "architecture": preset.architecture,
        "features_per_stage": [min(cap, probe.features * 2**stage) for stage in range(stages)],
        "kernel_sizes": [[3] * dimension for _ in range(stages)],
        "strides": [[1] * dimension] + [[2] * dimension for _ in range(stages - 1)],
        "blocks_per_stage_encoder": preset.encoder_blocks(stages),
        "convs_per_stage_decoder": [preset.decoder_convolutions_per_stage] * (stages - 1),
    }
    return Configuration(
        name=probe.name, dimension=dimension, spacing=(1.0,) * dimension, patch_size=probe.patch_size,
        batch_size=probe.batch_size * batch_factor, network=network,
        normalization=({"scheme": "zscore", "use_mask": False},), resampling={},
    )


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo`` model name, else what ``platform`` knows)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def throughput_key(device: str | torch.device, precision: str, *, threads: int | None = None) -> dict[str, Any]:
    """What a measurement depends on; a model measured under another key is not reused."""
    device = torch.device(device)
    return {
        "cpu": cpu_model(),
        "cpus": available_cpus(),
        "device": device_name(device),
        "torch": torch.__version__,
        "precision": resolve_precision(precision, device),
        "threads": int(threads or available_cpus()),
        "probe_set": PROBE_SET_VERSION,
    }


def busy_cpus_of_other_processes(seconds: float = 0.5) -> float | None:
    """CPUs' worth of time the machine spent busy over ``seconds`` while this process slept (``/proc/stat``), or
    None where that file does not exist."""

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as statistics_file:
            fields = [int(value) for value in statistics_file.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + waiting for I/O
        return sum(fields) - idle, sum(fields)

    try:
        busy_before, total_before = busy_and_total()
        time.sleep(seconds)
        busy_after, total_after = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    if total_after == total_before:
        return 0.0
    return (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1)


def default_cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoseg" / "throughput"


def machine_throughput(
    device: str | torch.device,
    precision: str,
    *,
    threads: int | None = None,
    cache_folder: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] = print,
) -> ThroughputModel:
    """This machine's throughput model: the cached one measured under the same key, else measured now and cached."""
    key = throughput_key(device, precision, threads=threads)
    path = Path(cache_folder or default_cache_folder()) / f"{key_hash(key)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = ThroughputModel.from_json(read_json(path))
        if cached.key == key:
            return cached
    say(f"measuring training throughput on {key['device']} ({key['precision']}, {key['threads']} threads); "
        f"cached in {path}")
    model = measure_throughput(device, precision, threads=threads, say=say)
    write_json(path, model.to_json())
    return model


def measure_throughput(
    device: str | torch.device, precision: str, *, threads: int | None = None, say: Callable[[str], None] = print
) -> ThroughputModel:
    """Time every probe's training step and augmentation on ``device`` in ``precision`` and fit the model."""
    started, busy_before = time.perf_counter(), busy_cpus_of_other_processes()
    device = torch.device(device)
    key = throughput_key(device, precision, threads=threads)
    if device.type == "cpu" and (busy_before or 0.0) > BUSY_CPUS:
        say(f"warning: other processes are using {busy_before:.1f} CPUs; the throughput measured will be that of a "
            "busy machine")
    precision = key["precision"]
    threads_before = torch.get_num_threads()
    set_torch_threads(key["threads"])
    enable_fast_kernels(device)
    batch_factor = 1 if device.type == "cpu" else ACCELERATOR_BATCH_FACTOR
    try:
        with tempfile.TemporaryDirectory(prefix="autoseg_throughput_") as scratch:
            probes = [
                _measure_probe(probe_configuration(probe, batch_factor=batch_factor), device, precision, Path(scratch),
                               say)
                for probe in PROBES
            ]
        peaks = {str(dimension): _dense_convolution_rate(dimension, device, precision, batch_factor)
                 for dimension in sorted({probe.dimension for probe in PROBES})}
        fresh_pages = fresh_page_seconds_per_gigabyte(device)
    finally:
        torch.set_num_threads(threads_before)
    model = fit_throughput_model(
        probes, key=key, data_overlaps_step=device.type != "cpu",
        data_workers=default_number_of_workers(DistributedContext(), device.type), peak_conv_flops_per_second=peaks,
        fresh_page_seconds_per_gigabyte=fresh_pages, measurement_seconds=time.perf_counter() - started,
        busy_cpus_of_others=max((busy for busy in (busy_before, busy_cpus_of_other_processes()) if busy is not None),
                                default=None),
    )
    say(f"throughput measured in {model.measurement_seconds:.0f} s; dense convolution peak "
        + ", ".join(f"{dimension}D {rate / 1e9:.0f} GFLOP/s" for dimension, rate in peaks.items())
        + f"; fresh pages {fresh_pages:.2f} s/GB")
    return model


def _measure_probe(
    configuration: Configuration, device: torch.device, precision: str, scratch: Path, say: Callable[[str], None]
) -> ProbeMeasurement:
    work = step_work(configuration, batch_size=configuration.batch_size, in_channels=1,
                     out_channels=PROBE_OUT_CHANNELS, precision=precision)
    step_seconds = time_training_steps(configuration, device, precision)
    data_seconds = time_augmentation(configuration, scratch)
    say(f"  probe {configuration.name}: {work.gflop:.0f} GFLOP, step {step_seconds:.3f} s "
        f"({work.flops / step_seconds / 1e9:.0f} GFLOP/s), augmentation {data_seconds:.3f} s")
    return ProbeMeasurement(configuration.name, work, step_seconds, data_seconds)


def time_training_steps(
    configuration: Configuration, device: torch.device, precision: str, *, warmup: int = WARMUP_STEPS,
    timed: int = TIMED_STEPS,
) -> float:
    """Median seconds of ``timed`` training steps after ``warmup`` untimed ones, on random data and labels.

    The step is the loop's own (``autoseg.training.step.optimiser_step``): batch to the device, forward under
    autocast, deep-supervision Dice + CE, scaled backward, gradient clipping, SGD step, and reading the loss back
    (which waits for an asynchronous device).
    """
    network = build_network(configuration, in_channels=1, out_channels=PROBE_OUT_CHANNELS).to(device)
    network.train()
    scales = deep_supervision_scales(configuration)
    loss_function = build_loss("dice_ce", num_classes=PROBE_OUT_CHANNELS)
    optimizer = OPTIMIZERS["sgd_nesterov"](network.parameters())
    scaler = make_gradient_scaler(device, precision)
    generator = torch.Generator().manual_seed(0)
    batch, patch = configuration.batch_size, configuration.patch_size
    data = torch.randn(batch, 1, *patch, generator=generator)
    targets = [torch.randint(0, PROBE_OUT_CHANNELS, (batch, 1, *[round(size * s) for size, s in zip(patch, scale,
                                                                                                   strict=True)]),
                             generator=generator) for scale in scales]
    seconds = []
    for step in range(warmup + timed):
        started = time.perf_counter()
        optimiser_step(network, optimizer, scaler, loss_function, data, targets, device=device, precision=precision,
                       gradient_clip_norm=DEFAULT_GRADIENT_CLIP_NORM)
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def time_augmentation(configuration: Configuration, scratch: Path, *, samples: int = AUGMENTED_SAMPLES) -> float:
    """Mean seconds to sample and augment one batch with the training loader's pipeline, in one thread.

    The loader is ``make_training_loader`` itself (patch sampling from memory-mapped cases, the default
    augmentation, deep-supervision targets), run in this process with one thread, as each loader worker runs it.
    The cases are synthetic, sized so that the sampled region (patch enlarged for rotation and scaling) fits.
    """
    folder = scratch / configuration.name.replace(" ", "_").replace("^", "")
    case_ids = _write_synthetic_cases(folder, configuration)
    batches = max(3, math.ceil(samples / configuration.batch_size))
    loader = make_training_loader(folder, case_ids, configuration=configuration, batch_size=configuration.batch_size,
                                  num_workers=0, seed=0, deep_supervision_scales=deep_supervision_scales(configuration))
    with loader, _one_thread():
        next(loader)  # opens the memory maps
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        return (time.perf_counter() - started) / batches


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch and BLAS limited to one thread, as in a loader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _write_synthetic_cases(folder: Path, configuration: Configuration, *, cases: int = 2) -> list[str]:
    """Preprocessed cases (``CASE.npy``, ``CASE_seg.npy``, ``CASE.json``) of random intensities and two classes.

    3D cases are as large as the sampled region; 2D cases are a few slices of it (a 2D configuration samples one
    slice of axis 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    sampled = sampled_patch_size(configuration.patch_size, AugmentationSettings())
    shape = [4, *sampled] if configuration.dimension == 2 else list(sampled)
    random = np.random.default_rng(0)
    identifiers = []
    for index in range(cases):
        identifier = f"probe_{index:03d}"
        image = random.standard_normal((1, *shape), dtype=np.float32)
        labels = np.zeros((1, *shape), dtype=np.int8)
        centre = tuple(slice(size // 4, size - size // 4) for size in shape)
        labels[(0, *centre)] = 1
        labels[(0, *(slice(size // 2 - 1, size // 2 + 1) for size in shape))] = 2
        locations = {str(label): np.argwhere(labels[0] == label)[::7].tolist() for label in (1, 2)}
        np.save(folder / f"{identifier}.npy", image)
        np.save(folder / f"{identifier}_seg.npy", labels)
        write_json(folder / f"{identifier}.json", {"identifier": identifier, "shape_after_resampling": shape,
                                                   "class_locations": locations})
        identifiers.append(identifier)
    return identifiers


def _dense_convolution_rate(dimension: int, device: torch.device, precision: str, batch_factor: int) -> float:
    """FLOP/s of a 128-channel 3x3(x3) convolution's forward and backward: the ceiling of convolution throughput."""
    shape = (2 * batch_factor, 128, *([16] * 3 if dimension == 3 else [64] * 2))
    convolution = (torch.nn.Conv3d if dimension == 3 else torch.nn.Conv2d)(128, 128, 3, padding=1).to(device)
    features = torch.randn(*shape, device=device, requires_grad=True)
    counter = FlopCounterMode(display=False)
    seconds = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        started = time.perf_counter()
        with counter if step == 0 else contextlib.nullcontext():  # the first (untimed) step is counted
            with autocast_for(device, precision):
                output = convolution(features)
            output.float().sum().backward()
        float(features.grad.flatten()[0])
        seconds.append(time.perf_counter() - started)
    return counter.get_total_flops() / statistics.median(seconds[WARMUP_STEPS:])


def fresh_page_seconds_per_gigabyte(device: torch.device, *, repeats: int = 8, rounds: int = 3) -> float:
    """Extra seconds per GB of writing freshly allocated 64 MiB tensors rather than a reused one (CPU only).

    glibc gives allocations this large fresh pages from the kernel, which faults each page in on first write; a
    training step on CPU does this for all its large tensors (see ``autoseg.planning.step_cost``). The writes use
    torch's threads, as the step's kernels do. On a GPU the caching allocator reuses memory: 0.
    """
    if device.type != "cpu":
        return 0.0
    elements = LARGE_TENSOR_BYTES // 4
    reused = torch.empty(elements)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.empty(elements).fill_(1.0)
        fresh = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(repeats):
            reused.fill_(1.0)
        samples.append(max(0.0, fresh - (time.perf_counter() - started)) / (repeats * LARGE_TENSOR_BYTES / 1e9))
    return statistics.median(samples)


FORWARD_SHARE_OF_STEP = 0.5  # a forward pass is about a third of a step's arithmetic; the rest pays data handling


@dataclasses.dataclass(frozen=True)
class MachineCosts:
    """Predicted seconds of a training step and of predicting a case, for one dataset on this machine's device."""

    model: ThroughputModel
    dataset: RawDataset
    device: torch.device

    def step_seconds(self, configuration: Configuration) -> float:
        """One training step at the batch the loop uses on the device (a cascade stage also reads the previous
        stage's label channels)."""
        batch = device_batch_size(configuration.batch_size, configuration.patch_size, device=self.device.type)
        return self._step_seconds(configuration, batch)

    def case_prediction_seconds(
        self, configuration: Configuration, *, input_voxels: float | None = None, mirrored: bool = True
    ) -> float | None:
        """Predicting one median-sized case as validation does: the network's passes (``network_seconds``) plus
        the work in the input's grid (``input_grid_seconds``: reading, resampling in and out, writing), which
        dominates for a large image predicted on a coarse grid. ``input_voxels`` is the median case's voxel count
        in its own grid (``plans.json``'s ``original_median_shape``); without it the network's grid is taken.
        None without a median shape."""
        network = self.network_seconds(configuration, mirrored=mirrored)
        if network is None:
            return None
        voxels = input_voxels if input_voxels is not None else math.prod(configuration.median_shape)
        return network + input_grid_seconds(voxels, self.dataset.num_channels, self.dataset.num_output_channels)

    def network_seconds(self, configuration: Configuration, *, mirrored: bool = True) -> float | None:
        """The network's share of a case: half-overlapping sliding-window tiles (every slice of a 3D case for a 2D
        network) x the mirrored passes (4 in 2D, 8 in 3D; 1 without mirroring) x one batch-1 forward pass, taken as
        ``FORWARD_SHARE_OF_STEP`` of a batch-1 training step. None without a median shape."""
        if configuration.median_shape is None:
            return None
        tiles = tiles_per_case(configuration.median_shape, configuration.patch_size)
        passes = 2 ** configuration.dimension if mirrored else 1
        return tiles * passes * FORWARD_SHARE_OF_STEP * self._step_seconds(configuration, 1)

    def _step_seconds(self, configuration: Configuration, batch_size: int) -> float:
        extra = len(self.dataset.foreground_labels) if configuration.previous_stage else 0
        work = step_work(configuration, batch_size=batch_size, in_channels=self.dataset.num_channels + extra,
                         out_channels=self.dataset.num_output_channels, precision=self.model.key["precision"])
        return self.model.seconds_per_iteration(work)


# Seconds per voxel of a case in its own grid, measured on a 512x512x300 CT volume predicted on a 3.1 mm grid (2
# shared CPU cores, docs/inference.md) and rounded up: reading and preprocessing (crop, normalise, cubic resampling)
# per voxel and channel; resampling back and the argmax per voxel and class; writing the compressed label map.
READ_SECONDS_PER_VOXEL_AND_CHANNEL = 0.06e-6
EXPORT_SECONDS_PER_VOXEL_AND_CLASS = 0.009e-6
WRITE_SECONDS_PER_VOXEL = 0.1e-6


def input_grid_seconds(voxels: float, channels: int, classes: int) -> float:
    """Seconds of a case's work in its own grid: reading and resampling ``channels`` images in, resampling
    ``classes`` probabilities back, taking the label map and writing it."""
    return voxels * (channels * READ_SECONDS_PER_VOXEL_AND_CHANNEL + classes * EXPORT_SECONDS_PER_VOXEL_AND_CLASS
                     + WRITE_SECONDS_PER_VOXEL)


def median_input_voxels(plans: Plans) -> float | None:
    """Voxels of the median case in its own grid (``plans.json``'s ``original_median_shape``), None if absent."""
    shape = plans.get("original_median_shape")
    return float(math.prod(shape)) if shape else None


def machine_costs(dataset: RawDataset, device: torch.device, precision: str, *,
                  say: Callable[[str], None] = print) -> MachineCosts:
    """The costs of ``dataset``'s configurations on ``device``; the machine's throughput model is measured on first
    use (``machine_throughput``) and cached."""
    return MachineCosts(machine_throughput(device, precision, say=say), dataset, device)


def tiles_per_case(median_shape: Sequence[float], patch_size: Sequence[int], *, step_size: float = 0.5) -> int:
    """Sliding-window tiles over a case of ``median_shape`` (axes beyond the patch's are slices, one pass each)."""
    leading = median_shape[: len(median_shape) - len(patch_size)]
    spatial = [max(round(size), patch) for size, patch in zip(median_shape[len(leading):], patch_size, strict=True)]
    slices = math.prod(max(1, round(size)) for size in leading)
    return slices * math.prod(len(starts) for starts in tile_starts(spatial, patch_size, step_size=step_size))
