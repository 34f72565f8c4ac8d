"""Seconds per training iteration of a planned configuration, predicted from counted work and measured coefficients.

A training step's time is modelled, per dimension (2D and 3D kernels run at different speeds), as

    step = a * GFLOP + b * M activation elements + c * M input voxels + d + l * layers + p * GB of fresh pages

- ``GFLOP``: forward + backward floating-point operations of one step (convolutions, transposed convolutions and
  heads), counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device: exact, instant, and no
  memory (``count_training_step``). Dense arithmetic, paid at the device's convolution rate.
- ``M activation elements``: the tensors a step writes and reads back (``memory_model.stored_activation_elements``
  times the batch): instance norms, activations, concatenations and the loss are memory-bound, paid per element.
- ``M input voxels``: batch x patch voxels: what scales with the patch but not the network (the copy to the device,
  per-voxel loss bookkeeping).
- ``d``: fixed cost per step (the optimiser over every parameter, Python).
- ``layers``: the network's convolutions (transposed and heads included). Each pays a cost per step whatever its
  size, forward and backward: choosing and preparing its kernel, its normalisation and activation, their dispatch.
  Without this term deeper networks (residual encoders, 6 stages) were predicted 20-35 % too fast and shallow ones
  with large batches too slow (docs/planning.md, "Throughput model").
- ``GB of fresh pages``: on CPU, glibc serves every allocation of at least 32 MiB (``LARGE_ALLOCATION_BYTES``)
  with a fresh ``mmap`` and returns it to the kernel when freed, so each step faults those tensors' pages in anew
  (for large batches a sizeable share of the step, docs/planning.md). The large allocations are
  counted on the ``meta`` device like the FLOPs, times ``UNCOUNTED_ALLOCATION_FACTOR`` for the buffers the count
  cannot see; ``p`` is measured directly (fresh against reused 64 MiB tensors), not fitted, because probes small
  enough to time quickly allocate no such tensors. On a GPU the caching allocator reuses memory and ``p`` is 0.
  Sizes are counted in the training precision's element size: under bfloat16 autocast every tensor of the network
  (convolutions, norms, activations) is half as large as in float32, and many drop below the threshold (what
  counting in float32 instead did to the predictions: docs/planning.md, "Throughput model").

and the augmented batch the step consumes costs ``data = e * M input voxels + f`` seconds of one CPU core, in a
background worker. How the loop pays it depends on the device (``ThroughputModel.data_overlaps_step``):

- CPU: the loop augments each batch in the training process between steps (``default_number_of_workers``: the
  network's threads use every core, and a background worker would deschedule one of them while the others wait for
  it at the next barrier, which measured slower than doing the same work in line), so ``seconds = step + data``,
  the linear formula above with ``c + e`` and ``d + f``.
- GPU: workers run on CPU cores while the GPU computes, ``seconds = max(step, data / workers)``.

The coefficients are fitted (non-negative least squares, relative error) to a handful of probe networks timed on
this machine (``autoseg.pipeline.machine_benchmark.measure_throughput``), and kept with the key of what they were
measured under, so a different machine, device, precision or thread count is measured again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from autoseg.networks import build_network
from autoseg.planning.memory_model import stored_activation_elements
from autoseg.records.plans import Configuration

GIGA = 1e9
MEGA = 1e6
# glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): allocations at least this large
# always get fresh pages from the kernel.
LARGE_ALLOCATION_BYTES = 32 * 2**20
# Pages a CPU training step faults in (ru_minflt) per large-allocation byte counted on the meta device: the count
# sees autograd's tensors, not oneDNN's layout reorders and workspaces. Measured in float32 (docs/planning.md, "Fresh
# pages"); used for bfloat16 as well.
UNCOUNTED_ALLOCATION_FACTOR = 1.75
# The element type a step's tensors have under each training precision (autocast on CPU and CUDA alike).
ELEMENT_TYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STEP_TERMS = ("seconds_per_gflop", "seconds_per_million_activations", "seconds_per_million_input_voxels",
              "seconds_per_step", "seconds_per_layer", "seconds_per_gigabyte_fresh_pages")
FITTED_STEP_TERMS = STEP_TERMS[:5]
DATA_TERMS = ("seconds_per_million_input_voxels", "seconds_per_batch")


@dataclasses.dataclass(frozen=True)
class StepWork:
    """What one training step of a configuration at a batch size does, counted (not timed)."""

    flops: float  # forward + backward, whole batch
    activation_elements: float  # stored for the backward pass, whole batch
    input_voxels: float  # batch x patch voxels
    dimension: int
    fresh_page_bytes: float = 0.0  # large allocations (see the module docstring), whole batch
    layers: float = 0.0  # convolutions of the network, each run forward and backward once per step


    @property
    def gflop(self) -> float:
        return self.flops / GIGA

    def terms(self) -> list[float]:
        """The step model's regressors, in ``STEP_TERMS`` order."""
        return [self.flops / GIGA, self.activation_elements / MEGA, self.input_voxels / MEGA, 1.0, self.layers,
                self.fresh_page_bytes / GIGA]

    def data_terms(self) -> list[float]:
        """The augmentation model's regressors, in ``DATA_TERMS`` order."""
        return [self.input_voxels / MEGA, 1.0]


class _LargeAllocationCounter(TorchDispatchMode):
    """Bytes of the tensors every operation creates (not views, not in-place results) of at least ``threshold``."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.large_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs, _ = tree_flatten(result)
        for declared, output in zip(func._schema.returns, outputs, strict=False):
            if isinstance(output, torch.Tensor) and declared.alias_info is None:
                size = output.numel() * output.element_size()
                if size >= self.threshold:
                    self.large_bytes += size
        return result


def count_training_step(
    configuration: Configuration, *, batch_size: int, in_channels: int, out_channels: int,
    precision: str = "float32",
) -> tuple[float, float]:
    """(FLOPs, bytes in large allocations) of one training step in ``precision`` (a resolved name, not ``auto``):
    forward and backward of the network as the loop trains it (deep supervision on).

    The network is built on the ``meta`` device, where no tensor holds memory and kernels only compute shapes, so
    counting a 3D network takes a fraction of a second. The input does not require a gradient, so the first
    convolution's backward computes its weight gradient only, as in training. The loss (element-wise) is not
    counted; its cost is part of the activation term. Autocast does not act on ``meta`` tensors, so the network
    and its input are cast to the precision's element type instead: the same tensor sizes, except the weights and
    their gradients (which autocast keeps in float32, and which are far below the large-allocation threshold).
    """
    element_type = ELEMENT_TYPES[precision]
    with torch.device("meta"):
        network = build_network(configuration, in_channels=in_channels, out_channels=out_channels,
                                deep_supervision=True).to(element_type)
        network.train()
        image = torch.empty(batch_size, in_channels, *configuration.patch_size, dtype=element_type)
    flop_counter = FlopCounterMode(display=False)
    allocations = _LargeAllocationCounter(LARGE_ALLOCATION_BYTES)
    with flop_counter, allocations:
        outputs = network(image)
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
        sum(output.float().sum() for output in outputs).backward()
    return float(flop_counter.get_total_flops()), float(allocations.large_bytes)


def count_training_flops(
    configuration: Configuration, *, batch_size: int, in_channels: int, out_channels: int
) -> float:
    """Forward + backward FLOPs of one training step (see ``count_training_step``)."""
    return count_training_step(configuration, batch_size=batch_size, in_channels=in_channels,
                               out_channels=out_channels)[0]


@functools.lru_cache(maxsize=512)
def _cached_count(dimension: int, network_json: str, patch_size: tuple[int, ...], batch_size: int, in_channels: int,
                  out_channels: int, precision: str) -> tuple[float, float, int]:
    """(FLOPs, large-allocation bytes, convolution layers) of one training step."""
    configuration = Configuration(name="count", dimension=dimension, spacing=(1.0,) * dimension,
                                  patch_size=patch_size, batch_size=batch_size, network=json.loads(network_json),
                                  normalization=(), resampling={})
    flops, large_bytes = count_training_step(configuration, batch_size=batch_size, in_channels=in_channels,
                                             out_channels=out_channels, precision=precision)
    return flops, large_bytes, convolution_layers(configuration)


def convolution_layers(configuration: Configuration) -> int:
    """Convolutions (transposed convolutions and the deep-supervision heads included) of the network a training
    step runs, counted on the ``meta`` device."""
    with torch.device("meta"):
        network = build_network(configuration, in_channels=1, out_channels=2, deep_supervision=True)
    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    return sum(isinstance(module, kinds) for module in network.modules())


def step_work(configuration: Configuration, *, batch_size: int, in_channels: int, out_channels: int,
              precision: str = "float32") -> StepWork:
    """The counted work of one training step of ``configuration`` at ``batch_size`` in ``precision`` (a resolved
    name; counts cached per network, patch, batch and precision: planners ask about the same candidates
    repeatedly)."""
    patch_size = tuple(int(size) for size in configuration.patch_size)
    network_json = json.dumps(configuration.network.to_json(), sort_keys=True)
    flops, large_bytes, layers = _cached_count(configuration.dimension, network_json,
                                       patch_size, int(batch_size), int(in_channels), int(out_channels), precision)
    activations = stored_activation_elements(configuration.network, patch_size, in_channels=in_channels,
                                             out_channels=out_channels)
    return StepWork(
        flops=flops,
        activation_elements=activations * batch_size,
        input_voxels=float(batch_size * math.prod(patch_size)),
        dimension=configuration.dimension,
        fresh_page_bytes=large_bytes * UNCOUNTED_ALLOCATION_FACTOR,
        layers=float(layers),
    )


@dataclasses.dataclass(frozen=True)
class ProbeMeasurement:
    """One probe network's counted work and measured times (medians after warm-up)."""

    name: str
    work: StepWork
    step_seconds: float  # forward, loss, backward, optimiser step
    data_seconds: float  # one augmented batch, one CPU core

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.work), "step_seconds": self.step_seconds,
                "data_seconds": self.data_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeMeasurement:
        work = StepWork(flops=float(data["flops"]), activation_elements=float(data["activation_elements"]),
                        input_voxels=float(data["input_voxels"]), dimension=int(data["dimension"]),
                        fresh_page_bytes=float(data.get("fresh_page_bytes", 0.0)),
                        layers=float(data.get("layers", 0.0)))
        return cls(str(data["name"]), work, float(data["step_seconds"]), float(data["data_seconds"]))


def fit_non_negative(rows: Sequence[Sequence[float]], seconds: Sequence[float]) -> list[float]:
    """Coefficients ``x >= 0`` minimising the squared *relative* error of ``rows @ x`` against ``seconds``.

    Relative, so that a probe of 0.1 s counts as much as one of 2 s: the model must be right in ratio for small and
    large configurations alike. Non-negative, because no work makes a step faster; a term the probes cannot tell
    apart from the others gets 0 rather than a large positive and negative pair that extrapolates wildly.
    """
    matrix = np.asarray(rows, dtype=float)
    target = np.asarray(seconds, dtype=float)
    if matrix.ndim != 2 or len(matrix) != len(target) or len(target) == 0:
        raise ValueError(f"need one row of terms per measurement, got {matrix.shape} and {target.shape}")
    if np.any(target <= 0):
        raise ValueError("measured seconds must be positive")
    weights = 1.0 / target
    # Columns are scaled to unit norm first, so that terms of very different magnitude are treated alike.
    scale = np.linalg.norm(matrix * weights[:, None], axis=0)
    scale[scale == 0] = 1.0
    solution, _residual = nnls(matrix * weights[:, None] / scale, target * weights)
    return [float(value) for value in solution / scale]


@dataclasses.dataclass(frozen=True)
class ThroughputModel:
    """Fitted seconds per training iteration on one machine, device, precision and thread count (the ``key``).

    ``step_coefficients[str(dimension)]`` and ``data_coefficients[str(dimension)]`` map ``STEP_TERMS`` and
    ``DATA_TERMS`` to seconds (see the module docstring); ``peak_conv_flops_per_second[str(dimension)]`` is the rate
    of a large dense convolution (forward and backward) on the device, the practical ceiling a step's achieved
    FLOP/s is compared with.
    """

    key: dict[str, Any]
    step_coefficients: dict[str, dict[str, float]]
    data_coefficients: dict[str, dict[str, float]]
    data_overlaps_step: bool  # GPU: workers augment while the device computes
    data_workers: int
    peak_conv_flops_per_second: dict[str, float]
    probes: tuple[ProbeMeasurement, ...] = ()
    measurement_seconds: float = 0.0
    # CPUs' worth of time other processes used just before and just after the measurement (the larger): they slow
    # the probes down, and a model measured on a busy machine predicts a busy machine.
    busy_cpus_of_others: float | None = None

    def step_seconds(self, work: StepWork) -> float:
        coefficients = self._coefficients(self.step_coefficients, work.dimension)
        return sum(coefficients[term] * value for term, value in zip(STEP_TERMS, work.terms(), strict=True))

    def data_seconds(self, work: StepWork) -> float:
        """CPU seconds of one core to sample and augment the step's batch."""
        coefficients = self._coefficients(self.data_coefficients, work.dimension)
        return sum(coefficients[term] * value for term, value in zip(DATA_TERMS, work.data_terms(), strict=True))

    def seconds_per_iteration(self, work: StepWork) -> float:
        """Predicted wall-clock seconds of one training iteration, augmentation paid as the loop pays it."""
        step, data = self.step_seconds(work), self.data_seconds(work)
        if self.data_overlaps_step:
            return max(step, data / max(1, self.data_workers))
        return step + data

    def achieved_fraction_of_peak(self, work: StepWork, seconds: float) -> float:
        """FLOP/s of a step taking ``seconds``, as a fraction of the device's dense-convolution rate."""
        return work.flops / seconds / self.peak_conv_flops_per_second[str(work.dimension)]

    @staticmethod
    def _coefficients(table: dict[str, dict[str, float]], dimension: int) -> dict[str, float]:
        if str(dimension) not in table:
            raise ValueError(f"the throughput model has no {dimension}D coefficients (probed: {', '.join(table)})")
        return table[str(dimension)]

    @property
    def key_hash(self) -> str:
        return key_hash(self.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "step_coefficients": self.step_coefficients,
            "data_coefficients": self.data_coefficients,
            "data_overlaps_step": self.data_overlaps_step,
            "data_workers": self.data_workers,
            "peak_conv_flops_per_second": self.peak_conv_flops_per_second,
            "probes": [probe.to_json() for probe in self.probes],
            "measurement_seconds": self.measurement_seconds,
            "busy_cpus_of_others": self.busy_cpus_of_others,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ThroughputModel:
        return cls(
            key=dict(data["key"]),
            step_coefficients={dim: {term: float(value[term]) for term in STEP_TERMS}
                               for dim, value in data["step_coefficients"].items()},
            data_coefficients={dim: {term: float(value[term]) for term in DATA_TERMS}
                               for dim, value in data["data_coefficients"].items()},
            data_overlaps_step=bool(data["data_overlaps_step"]),
            data_workers=int(data["data_workers"]),
            peak_conv_flops_per_second={dim: float(value) for dim, value in data["peak_conv_flops_per_second"].items()},
            probes=tuple(ProbeMeasurement.from_json(probe) for probe in data.get("probes", ())),
            measurement_seconds=float(data.get("measurement_seconds", 0.0)),
            busy_cpus_of_others=None if data.get("busy_cpus_of_others") is None else float(data["busy_cpus_of_others"]),
        )


def key_hash(key: dict[str, Any]) -> str:
    """A short, stable name for a measurement key (the cache file's name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def fit_throughput_model(
    probes: Sequence[ProbeMeasurement],
    *,
    key: dict[str, Any],
    data_overlaps_step: bool,
    data_workers: int,
    peak_conv_flops_per_second: dict[str, float],
    fresh_page_seconds_per_gigabyte: float = 0.0,
    measurement_seconds: float = 0.0,
    busy_cpus_of_others: float | None = None,
) -> ThroughputModel:
    """Fit the step and data coefficients of each probed dimension (see ``fit_non_negative``).

    The fresh-page cost is measured, not fitted: it is taken off each probe's step time before the fit and kept as
    the last step coefficient."""
    step_coefficients, data_coefficients = {}, {}
    for dimension in sorted({probe.work.dimension for probe in probes}):
        chosen = [probe for probe in probes if probe.work.dimension == dimension]
        fitted_seconds = [
            max(0.05 * probe.step_seconds,
                probe.step_seconds - fresh_page_seconds_per_gigabyte * probe.work.fresh_page_bytes / GIGA)
            for probe in chosen
        ]
        step = fit_non_negative([probe.work.terms()[: len(FITTED_STEP_TERMS)] for probe in chosen], fitted_seconds)
        data = fit_non_negative([probe.work.data_terms() for probe in chosen],
                                [probe.data_seconds for probe in chosen])
        step_coefficients[str(dimension)] = {**dict(zip(FITTED_STEP_TERMS, step, strict=True)),
                                             STEP_TERMS[-1]: float(fresh_page_seconds_per_gigabyte)}
        data_coefficients[str(dimension)] = dict(zip(DATA_TERMS, data, strict=True))
    return ThroughputModel(
        key=dict(key), step_coefficients=step_coefficients, data_coefficients=data_coefficients,
        data_overlaps_step=data_overlaps_step, data_workers=data_workers,
        peak_conv_flops_per_second=dict(peak_conv_flops_per_second), probes=tuple(probes),
        measurement_seconds=measurement_seconds,
        busy_cpus_of_others=busy_cpus_of_others,
    )
