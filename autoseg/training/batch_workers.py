"""Finished batches from the sampler and the augmentation: in the calling thread or in background worker processes.

``num_workers=0`` runs in the calling thread with its own random state; otherwise batchgenerators' worker processes
make the batches and hand them over in a fixed round-robin order, so a seed reproduces the stream either way.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from autoseg.training.distributed import DistributedContext
from autoseg.training.patch_sampling import PatchSampler
from autoseg.utils.processes import die_with_parent
from autoseg.utils.threads import available_cpus


def default_number_of_workers(context: DistributedContext, device_type: str = "cpu") -> int:
    """Background augmentation processes per rank.

    On an accelerator, one per CPU this rank can call its own (container CPU quotas included, see
    ``available_cpus``), at most 8: they augment while the device computes. On CPU, none: the batch is augmented in
    the training process between steps. The network's threads use every CPU, so a background worker can only run by
    descheduling one of them, and the others then wait for it at the next barrier: measured on 2 cores, iterations
    took 3-5 % longer with workers than with the same augmentation done in line
    (``benchmarks/loader_workers.py``), and in line the step and the augmentation simply add up, as the throughput
    model predicts."""
    if device_type == "cpu":
        return 0
    return max(1, min(8, available_cpus() // context.world_size))


class BatchPipeline:
    """Sampler + transforms, producing finished numpy batches (the unit of work a background worker does)."""

    def __init__(self, sampler: PatchSampler, transforms: Callable[..., dict[str, Any]]) -> None:
        self.sampler = sampler
        self.transforms = transforms

    def __iter__(self) -> BatchPipeline:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.transforms(**self.sampler.sample_batch())


def _labels_to_compact(segmentation: Any) -> Any:
    """float32 labels from batchgenerators -> int16 (smaller to ship between processes)."""
    if isinstance(segmentation, list):
        return [_labels_to_compact(item) for item in segmentation]
    return np.rint(segmentation).astype(np.int16)


class PrepareBatchRandomness:
    """First step of every batch: make the pipeline reproducible and keep worker processes single-threaded.

    batchgenerators' Gaussian noise draws its variance from Python's ``random``, which its workers never seed:
    re-seeding it from the (seeded) numpy stream makes the whole pipeline reproducible. In a worker process (not
    the process that built the loader) torch and BLAS are limited to one thread once, so that two workers and the
    training process do not fight over two cores with nested thread pools.
    """

    def __init__(self) -> None:
        self.creator_process = os.getpid()
        self.limited_process: int | None = None

    def __call__(self, **data_dict: Any) -> dict[str, Any]:
        if os.getpid() not in (self.creator_process, self.limited_process):
            _limit_threads_to_one()
            die_with_parent()
            self.limited_process = os.getpid()
        random.seed(int(np.random.randint(0, 2**31 - 1)))
        return data_dict


def _limit_threads_to_one() -> None:
    torch.set_num_threads(1)
    try:  # optional: present in most scientific stacks, not a dependency of autoseg
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


class CompactLabels:
    def __call__(self, **data_dict: Any) -> dict[str, Any]:
        data_dict["seg"] = _labels_to_compact(data_dict["seg"])
        data_dict["data"] = np.ascontiguousarray(data_dict["data"], dtype=np.float32)
        return data_dict


def _to_torch(batch: dict[str, Any]) -> dict[str, Any]:
    def labels(item: Any) -> Any:
        if isinstance(item, list):
            return [labels(element) for element in item]
        tensor = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.asarray(item))
        return tensor.long()

    data = batch["data"]
    return {
        "data": data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data)),
        "target": labels(batch["seg"]),
        "keys": list(batch["keys"]),
    }


def worker_seeds(seed: int, number_of_workers: int) -> list[int]:
    """Distinct, reproducible numpy seeds for each worker (numpy seeds must be < 2^32)."""
    sequence = np.random.SeedSequence(seed)
    return [int(child.generate_state(1)[0]) for child in sequence.spawn(max(1, number_of_workers))]


class InProcessBatches:
    """Runs the pipeline in the calling thread with its own random state (the caller's numpy/Python state is kept)."""

    def __init__(self, pipeline: BatchPipeline, seed: int) -> None:
        self.pipeline = pipeline
        saved = np.random.get_state()
        np.random.seed(worker_seeds(seed, 1)[0])
        self._state = np.random.get_state()
        np.random.set_state(saved)

    def __iter__(self) -> InProcessBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        saved, saved_python = np.random.get_state(), random.getstate()
        np.random.set_state(self._state)
        try:
            batch = next(self.pipeline)
        finally:
            self._state = np.random.get_state()
            np.random.set_state(saved)
            random.setstate(saved_python)
        return batch

    def shutdown(self) -> None:
        pass


class MultiProcessBatchgenerators:
    """batchgenerators ``MultiThreadedAugmenter``: worker processes, batches returned in a fixed round-robin order."""

    def __init__(self, pipeline: BatchPipeline, seed: int, number_of_workers: int, *, pin_memory: bool) -> None:
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

        self.augmenter = MultiThreadedAugmenter(
            pipeline.sampler,
            pipeline.transforms,
            number_of_workers,
            num_cached_per_queue=2,
            seeds=worker_seeds(seed, number_of_workers),
            pin_memory=pin_memory,
            wait_time=0.002,
        )

    def __iter__(self) -> MultiProcessBatchgenerators:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self.augmenter)

    def shutdown(self) -> None:
        self.augmenter._finish()  # the public way (del) depends on garbage collection


class PatchLoader:
    """Endless iterator of torch batches; a context manager whose exit (or ``shutdown()``) stops the workers."""

    def __init__(self, pipeline: BatchPipeline, *, seed: int, num_workers: int, pin_memory: bool) -> None:
        self.source: InProcessBatches | MultiProcessBatchgenerators | None = (
            InProcessBatches(pipeline, seed)
            if num_workers <= 0
            else MultiProcessBatchgenerators(pipeline, seed, int(num_workers), pin_memory=pin_memory)
        )

    def __iter__(self) -> PatchLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        return _to_torch(next(self.source))

    def shutdown(self) -> None:
        """Stop background workers (idempotent)."""
        if self.source is not None:
            self.source.shutdown()
            self.source = None

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
