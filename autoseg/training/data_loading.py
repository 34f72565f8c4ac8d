"""Random patch batches from the preprocessed folder, foreground-oversampled, augmented in background workers.

``make_training_loader`` and ``make_validation_loader`` return an endless iterator of
``{"data": float32 (B, C, *patch), "target": [int64 (B, 1, *patch * scale), ...] or one tensor, "keys": [...]}``.
Patches are read from memory-mapped ``CASE.npy``/``CASE_seg.npy`` (docs/design.md), so only the voxels of a patch
are touched. ``num_workers=0`` runs in the calling thread; otherwise batchgenerators' worker processes make the
batches and hand them over in a fixed round-robin order, so a seed reproduces the stream either way.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.records.plans import Configuration
from autoseg.training.augmentation import (
    AugmentationSettings,
    DeepSupervisionTargets,
    build_training_transforms,
    compose,
    sampled_patch_size,
)
from autoseg.training.cascade import PreviousStageToData
from autoseg.transforms.class_locations import ANNOTATED
from autoseg.utils.files import read_json
from autoseg.utils.processes import die_with_parent


def deep_supervision_scales(configuration: Configuration) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the patch, full resolution first.

    Output ``s`` (``s = 0 .. stages - 2``) has resolution ``1 / prod(strides[:s + 1])`` per axis; that is
    ``[1, 1, 1]`` for the first (its stride is 1), then e.g. ``[0.5, 0.5, 0.5]``, ``[0.25, 0.25, 0.25]``...
    """
    strides = np.asarray(configuration.network.strides, dtype=float)
    cumulative = np.cumprod(strides, axis=0)
    return [[float(1 / value) for value in row] for row in cumulative[:-1]]


def forced_foreground_samples(batch_size: int, oversample_foreground: float) -> int:
    """How many samples of a batch are forced onto foreground: the last ``B - round(B * (1 - fraction))``.

    The reference's count (nnU-Net v2 ``_oversample_last_XX_percent``): with the default 0.33 that is 0 of 1, 1 of
    2-4, 2 of 5-7, 3 of 8-10 and 4 of 11-13. Python's ``round`` (half to even) is part of the rule.
    """
    return int(batch_size) - round(int(batch_size) * (1 - oversample_foreground))


@dataclass
class PreprocessedCase:
    """One complete preprocessed case: paths to its arrays and its properties (class locations)."""

    identifier: str
    image_path: Path
    segmentation_path: Path
    class_locations: dict[int, np.ndarray]  # label -> (N, 3) voxel indices (z, y, x) in the stored arrays
    previous_stage_path: Path | None = None  # cascade: the previous stage's label map on this grid
    annotated_locations: np.ndarray | None = None  # ignore label: (N, 3) indices of annotated voxels, if sampled


def load_preprocessed_cases(
    preprocessed_folder: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    previous_stage_folder: str | os.PathLike[str] | None = None,
) -> list[PreprocessedCase]:
    """Read ``CASE.json`` of every case; a missing file (incomplete preprocessing) is a ``UserError`` naming it.

    ``previous_stage_folder`` (cascade) holds each case's previous-stage label map ``CASE.npy``."""
    folder = Path(preprocessed_folder)
    if not case_ids:
        raise UserError(f"no cases to load from {folder}")
    cases = []
    for identifier in case_ids:
        properties_path = folder / f"{identifier}.json"
        image_path = folder / f"{identifier}.npy"
        segmentation_path = folder / f"{identifier}_seg.npy"
        previous_path = None if previous_stage_folder is None else Path(previous_stage_folder) / f"{identifier}.npy"
        for path in (properties_path, image_path, segmentation_path):
            if not path.is_file():
                raise UserError(f"{path} is missing: preprocess the dataset (again) before training")
        if previous_path is not None and not previous_path.is_file():
            raise UserError(f"{previous_path} is missing: the previous stage's segmentations are incomplete")
        properties = _read_intact_case(properties_path, image_path, segmentation_path)
        locations = {
            key: np.asarray(points, dtype=np.int64).reshape(-1, 3)
            for key, points in properties.get("class_locations", {}).items()
        }
        annotated = locations.pop(ANNOTATED, None)
        locations = {int(label): points for label, points in locations.items()}
        cases.append(PreprocessedCase(identifier, image_path, segmentation_path, locations, previous_path, annotated))
    return cases


def _read_intact_case(properties_path: Path, image_path: Path, segmentation_path: Path) -> dict:
    """The sidecar of a case whose arrays open (memory-mapped: headers only) with the shape it records.

    A damaged file would otherwise fail at random in a loader worker, whenever a patch of that case is drawn.
    """
    redo = "run `autoseg preprocess` again to redo it (damaged cases are redone)."
    try:
        properties = read_json(properties_path)
    except ValueError:
        raise UserError(f"{properties_path}: is not valid JSON (cut short or damaged?); {redo}") from None
    expected = properties.get("shape_after_resampling")
    for path in (image_path, segmentation_path):
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: cannot be read ({str(error).rstrip('.')}); {redo}") from None
        if expected is not None and list(shape[1:]) != list(expected):
            raise UserError(
                f"{path}: has shape {list(shape[1:])} but {properties_path.name} records {expected}; {redo}"
            )
    return properties


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], *, pad_value: float) -> np.ndarray:
    """``array[:, lower:lower + size]`` over the trailing axes, padded with ``pad_value`` where it leaves the array.

    Only the overlapping region is read, which keeps memory-mapped reads small.
    """
    spatial = array.shape[1:]
    result = np.full((array.shape[0], *size), pad_value, dtype=array.dtype)
    source, destination = [slice(None)], [slice(None)]
    for start, length, extent in zip(lower, size, spatial, strict=True):
        begin, end = max(start, 0), min(start + length, extent)
        if end <= begin:
            return result
        source.append(slice(begin, end))
        destination.append(slice(begin - start, end - start))
    result[tuple(destination)] = array[tuple(source)]
    return result


class PatchSampler:
    """Endless source of raw (unaugmented) batches cut at ``sampled_size``, centred like the final patch would be.

    The last ``forced_foreground_samples(batch_size, oversample)`` samples of a batch are forced onto foreground:
    a class present in the case is drawn uniformly, then one of its stored locations, and the final patch is
    centred there (shifted only as far as needed to stay inside the image). Other samples draw the final patch's
    position uniformly such that it lies inside the image (or the image inside it, when the image is smaller).
    The cut-out region extends the final patch symmetrically to ``sampled_size``; everything outside the image is
    padded (image 0, label 0). For 2D configurations (``dimension == 2``) a slice of axis 0 is drawn first (the
    slice of the foreground location when forced).

    With an ``ignore_label`` (sparse annotation) every sample that is not forced onto foreground (and a forced one
    in a case without foreground) is centred on a random annotated voxel instead, as in the reference: a uniform
    position would often show the network nothing but ignored voxels, which teach it nothing. Cases preprocessed
    without the annotated voxels' locations fall back to uniform positions.

    Random numbers come from numpy's global generator so that batchgenerators workers (which seed it per worker)
    make every stream reproducible. It implements the batchgenerators data-loader protocol (``__next__``,
    ``set_thread_id``; sampling does not depend on the worker, only on the seed each worker is given).
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        *,
        patch_size: Sequence[int],
        sampled_size: Sequence[int],
        batch_size: int,
        dimension: int,
        oversample_foreground: float,
        ignore_label: int | None = None,
    ) -> None:
        if len(patch_size) != dimension or len(sampled_size) != dimension:
            raise ValueError(f"patch size {list(patch_size)} does not have {dimension} axes")
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.cases = list(cases)
        self.patch_size = [int(value) for value in patch_size]
        self.sampled_size = [int(value) for value in sampled_size]
        self.batch_size = int(batch_size)
        self.dimension = int(dimension)
        self.forced_per_batch = forced_foreground_samples(self.batch_size, oversample_foreground)
        self.ignore_label = ignore_label
        # Memory maps hold a file descriptor each: keep only the most recently used ones open.
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()

    def set_thread_id(self, thread_id: int) -> None:
        """Called by batchgenerators in each worker; nothing to do (see the class docstring)."""

    def __iter__(self) -> PatchSampler:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.sample_batch()

    MAXIMUM_OPEN_CASES = 64

    def _arrays(self, case: PreprocessedCase) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Image, labels and (cascade) the previous stage's label map, memory-mapped."""
        if case.identifier in self._open:
            self._open.move_to_end(case.identifier)
        else:
            image = np.load(case.image_path, mmap_mode="r")
            segmentation = np.load(case.segmentation_path, mmap_mode="r")
            if image.ndim != 4 or segmentation.shape != (1, *image.shape[1:]):
                raise UserError(
                    f"{case.image_path} has shape {image.shape} and its segmentation {segmentation.shape}; expected"
                    " (C, z, y, x) and (1, z, y, x)"
                )
            previous = None
            if case.previous_stage_path is not None:
                previous = np.load(case.previous_stage_path, mmap_mode="r")
                if previous.shape != segmentation.shape:
                    raise UserError(
                        f"{case.previous_stage_path} has shape {previous.shape}, its case {segmentation.shape}: "
                        "the previous stage's segmentations are stale; delete the folder to make them again"
                    )
            self._open[case.identifier] = (image, segmentation, previous)
            if len(self._open) > self.MAXIMUM_OPEN_CASES:
                self._open.popitem(last=False)
        return self._open[case.identifier]

    def _foreground_location(self, case: PreprocessedCase) -> np.ndarray | None:
        present = [
            label
            for label, points in case.class_locations.items()
            if len(points) and label != 0 and label != self.ignore_label
        ]
        if not present:
            return None
        label = present[np.random.randint(len(present))]
        points = case.class_locations[label]
        return points[np.random.randint(len(points))]

    def _centre(self, case: PreprocessedCase, forced: bool) -> np.ndarray | None:
        """Where to centre the patch: a foreground voxel when forced; with an ignore label an annotated voxel when
        not forced (or when the case has no foreground); None for a uniform position."""
        location = self._foreground_location(case) if forced else None
        annotated = case.annotated_locations
        if location is None and self.ignore_label is not None and annotated is not None and len(annotated):
            location = annotated[np.random.randint(len(annotated))]
        return location

    def _final_patch_lower_bound(self, shape: Sequence[int], centre: Sequence[int] | None) -> list[int]:
        lower = []
        for axis, (extent, size) in enumerate(zip(shape, self.patch_size, strict=True)):
            low, high = min(0, extent - size), max(0, extent - size)
            if centre is None:
                lower.append(np.random.randint(low, high + 1))
            else:
                lower.append(int(np.clip(int(centre[axis]) - size // 2, low, high)))
        return lower

    def sample_batch(self) -> dict[str, Any]:
        """One batch: ``data`` float32 (B, C, *sampled_size), ``seg`` float32 (B, 1, *sampled_size), ``keys``.

        For a cascade ``seg`` has a second channel, the previous stage's label map (see ``PreviousStageToData``)."""
        images, segmentations, keys = [], [], []
        for index in range(self.batch_size):
            case = self.cases[np.random.randint(len(self.cases))]
            image, segmentation, previous = self._arrays(case)
            forced = index >= self.batch_size - self.forced_per_batch
            location = self._centre(case, forced)
            if self.dimension == 2:
                slice_index = int(location[0]) if location is not None else np.random.randint(image.shape[1])
                image, segmentation = image[:, slice_index], segmentation[:, slice_index]
                previous = None if previous is None else previous[:, slice_index]
                location = location[1:] if location is not None else None
            final_lower = self._final_patch_lower_bound(image.shape[1:], location)
            lower = [
                start - (sampled - size) // 2
                for start, sampled, size in zip(final_lower, self.sampled_size, self.patch_size, strict=True)
            ]
            images.append(crop_with_padding(image, lower, self.sampled_size, pad_value=0).astype(np.float32))
            labels = crop_with_padding(segmentation, lower, self.sampled_size, pad_value=0)
            if previous is not None:
                previous_labels = crop_with_padding(previous, lower, self.sampled_size, pad_value=0)
                labels = np.concatenate([labels, previous_labels.astype(labels.dtype)])
            segmentations.append(labels)
            keys.append(case.identifier)
        return {
            "data": np.stack(images),
            "seg": np.stack(segmentations).astype(np.float32),
            "keys": keys,
        }


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


class _PrepareBatchRandomness:
    """First step of every batch: make the pipeline reproducible and keep worker processes single-threaded.

    batchgenerators' Gaussian noise draws its variance from Python's ``random``, which its workers never seed:
    re-seeding it from the (seeded) numpy stream makes the whole pipeline reproducible. In a worker process (not
    the process that built the loader) torch and BLAS are limited to one thread once, so that two workers and the
    training process do not fight over two cores with nested thread pools.
    """

    def __init__(self) -> None:
        self.creator_process = os.getpid()
        self.limited_process: int | None = None

    def __call__(self, **data_dict):
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


class _CompactLabels:
    def __call__(self, **data_dict):
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


def _build_loader(
    preprocessed_folder: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    configuration: Configuration,
    batch_size: int,
    num_workers: int,
    seed: int,
    oversample_foreground: float,
    deep_supervision_scales: Sequence[Sequence[float]] | None,
    augmentation: AugmentationSettings | None,
    ignore_label: int | None,
    pin_memory: bool | None,
    previous_stage_folder: str | os.PathLike[str] | None = None,
    foreground_labels: Sequence[int] = (),
) -> PatchLoader:
    dimension = configuration.dimension
    patch_size = list(configuration.patch_size)
    if len(patch_size) != dimension:
        raise ValueError(f"patch_size {patch_size} does not match dimension {dimension}")
    sampler = PatchSampler(
        load_preprocessed_cases(preprocessed_folder, case_ids, previous_stage_folder=previous_stage_folder),
        patch_size=patch_size,
        sampled_size=sampled_patch_size(patch_size, augmentation),
        batch_size=batch_size,
        dimension=dimension,
        oversample_foreground=oversample_foreground,
        ignore_label=ignore_label,
    )
    transforms: list[Any] = [_PrepareBatchRandomness()]
    if augmentation is not None:
        transforms += build_training_transforms(patch_size, augmentation)
    if previous_stage_folder is not None:
        transforms.append(PreviousStageToData(foreground_labels))
    if deep_supervision_scales is not None:
        transforms.append(DeepSupervisionTargets(deep_supervision_scales))
    transforms.append(_CompactLabels())
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return PatchLoader(
        BatchPipeline(sampler, compose(transforms)),
        seed=seed,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def make_training_loader(
    preprocessed_folder: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    configuration: Configuration,
    batch_size: int,
    num_workers: int,
    seed: int,
    oversample_foreground: float = 0.33,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    augmentation: AugmentationSettings | None = None,
    ignore_label: int | None = None,
    pin_memory: bool | None = None,
    previous_stage_folder: str | os.PathLike[str] | None = None,
    foreground_labels: Sequence[int] = (),
) -> PatchLoader:
    """Endless augmented training batches of ``configuration.patch_size`` patches.

    ``augmentation`` defaults to ``AugmentationSettings()`` (the reference's probabilities). With
    ``deep_supervision_scales`` (see ``deep_supervision_scales(configuration)``) ``target`` is a list of label
    tensors, one per scale, full resolution first; otherwise a single (B, 1, *patch) tensor. A cascade stage passes
    ``previous_stage_folder`` and ``foreground_labels``: ``data`` then ends with the previous stage's one-hot map.
    ``num_workers=0`` runs in the calling thread. Use as a context manager (or call ``shutdown()``) to stop the workers.

    Example:
        >>> with make_training_loader(preprocessed_folder, ["hippocampus_001", "hippocampus_004"],
        ...                           configuration=configuration, batch_size=2, num_workers=0, seed=0,
        ...                           deep_supervision_scales=deep_supervision_scales(configuration)) as loader:
        ...     batch = next(loader)
        >>> batch["data"].shape, batch["data"].dtype
        (torch.Size([2, 1, 40, 56, 40]), torch.float32)
        >>> [tuple(target.shape) for target in batch["target"]]  # one label patch per deep-supervision scale
        [(2, 1, 40, 56, 40), (2, 1, 20, 28, 20)]
    """
    return _build_loader(
        preprocessed_folder,
        case_ids,
        configuration=configuration,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        oversample_foreground=oversample_foreground,
        deep_supervision_scales=deep_supervision_scales,
        augmentation=augmentation if augmentation is not None else AugmentationSettings(),
        ignore_label=ignore_label,
        pin_memory=pin_memory,
        previous_stage_folder=previous_stage_folder,
        foreground_labels=foreground_labels,
    )


def make_validation_loader(
    preprocessed_folder: str | os.PathLike[str],
    case_ids: Sequence[str],
    *,
    configuration: Configuration,
    batch_size: int,
    num_workers: int,
    seed: int,
    oversample_foreground: float = 0.33,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    ignore_label: int | None = None,
    pin_memory: bool | None = None,
    previous_stage_folder: str | os.PathLike[str] | None = None,
    foreground_labels: Sequence[int] = (),
) -> PatchLoader:
    """Endless unaugmented, foreground-oversampled patches of the validation cases, for the per-epoch pseudo-Dice."""
    return _build_loader(
        preprocessed_folder,
        case_ids,
        configuration=configuration,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        oversample_foreground=oversample_foreground,
        deep_supervision_scales=deep_supervision_scales,
        augmentation=None,
        ignore_label=ignore_label,
        pin_memory=pin_memory,
        previous_stage_folder=previous_stage_folder,
        foreground_labels=foreground_labels,
    )
