"""Random patch batches from the preprocessed folder, foreground-oversampled, augmented in background workers.

``make_training_loader`` and ``make_validation_loader`` return an endless iterator of
``{"data": float32 (B, C, *patch), "target": [int64 (B, 1, *patch * scale), ...] or one tensor, "keys": [...]}``.
Their options are the fields of ``LoaderSpec``. The parts: ``cases`` (reading and checking the cases),
``patch_sampling`` (where patches are cut), ``augmentation`` (the transforms) and ``batch_workers`` (in-process or
background worker processes, reproducible from the seed either way).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autoseg.records.plans import Configuration
from autoseg.training.augmentation import (
    AugmentationSettings,
    DeepSupervisionTargets,
    build_training_transforms,
    compose,
    sampled_patch_size,
)
from autoseg.training.batch_workers import BatchPipeline, CompactLabels, PatchLoader, PrepareBatchRandomness
from autoseg.training.cascade import PreviousStageToData
from autoseg.training.cases import load_training_cases
from autoseg.training.patch_sampling import PatchSampler


def deep_supervision_scales(configuration: Configuration) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the patch, full resolution first.

    Output ``s`` (``s = 0 .. stages - 2``) has resolution ``1 / prod(strides[:s + 1])`` per axis; that is
    ``[1, 1, 1]`` for the first (its stride is 1), then e.g. ``[0.5, 0.5, 0.5]``, ``[0.25, 0.25, 0.25]``...
    """
    strides = np.asarray(configuration.network.strides, dtype=float)
    cumulative = np.cumprod(strides, axis=0)
    return [[float(1 / value) for value in row] for row in cumulative[:-1]]


@dataclasses.dataclass(frozen=True)
class LoaderSpec:
    """Everything that defines a patch loader.

    ``oversample_foreground`` is the fraction of each batch forced onto foreground (see
    ``patch_sampling.forced_foreground_samples``). With ``deep_supervision_scales`` ``target`` is a list of label
    tensors, one per scale, full resolution first; otherwise a single (B, 1, *patch) tensor. ``augmentation`` None
    means plain crops. A cascade stage gives ``previous_stage_folder`` and ``foreground_labels``: ``data`` then ends
    with the previous stage's one-hot map. ``num_workers=0`` runs in the calling thread; ``pin_memory`` None pins
    when CUDA is available.
    """

    preprocessed_folder: str | os.PathLike[str]
    case_ids: Sequence[str]
    configuration: Configuration
    batch_size: int
    num_workers: int
    seed: int
    oversample_foreground: float = 0.33
    deep_supervision_scales: Sequence[Sequence[float]] | None = None
    augmentation: AugmentationSettings | None = None
    ignore_label: int | None = None
    pin_memory: bool | None = None
    previous_stage_folder: str | os.PathLike[str] | None = None
    foreground_labels: Sequence[int] = ()


def build_loader(spec: LoaderSpec) -> PatchLoader:
    """The loader ``spec`` describes: cases checked, sampler, transforms, then in-process or worker batches."""
    dimension = spec.configuration.dimension
    patch_size = list(spec.configuration.patch_size)
    if len(patch_size) != dimension:
        raise ValueError(f"patch_size {patch_size} does not match dimension {dimension}")
    sampler = PatchSampler(
        load_training_cases(spec.preprocessed_folder, spec.case_ids, previous_stage_folder=spec.previous_stage_folder),
        patch_size=patch_size,
        sampled_size=sampled_patch_size(patch_size, spec.augmentation),
        batch_size=spec.batch_size,
        dimension=dimension,
        oversample_foreground=spec.oversample_foreground,
        ignore_label=spec.ignore_label,
    )
    transforms: list[Any] = [PrepareBatchRandomness()]
    if spec.augmentation is not None:
        transforms += build_training_transforms(patch_size, spec.augmentation)
    if spec.previous_stage_folder is not None:
        transforms.append(PreviousStageToData(spec.foreground_labels))
    if spec.deep_supervision_scales is not None:
        transforms.append(DeepSupervisionTargets(spec.deep_supervision_scales))
    transforms.append(CompactLabels())
    pin_memory = torch.cuda.is_available() if spec.pin_memory is None else spec.pin_memory
    return PatchLoader(
        BatchPipeline(sampler, compose(transforms)),
        seed=spec.seed,
        num_workers=spec.num_workers,
        pin_memory=pin_memory,
    )


def make_training_loader(
    preprocessed_folder: str | os.PathLike[str], case_ids: Sequence[str], **options: Any
) -> PatchLoader:
    """Endless augmented training batches of ``configuration.patch_size`` patches; ``options`` are the other fields
    of ``LoaderSpec`` (``configuration``, ``batch_size``, ``num_workers`` and ``seed`` required).

    ``augmentation`` defaults to ``AugmentationSettings()`` (the reference's probabilities). Use as a context manager
    (or call ``shutdown()``) to stop the workers.

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
    spec = LoaderSpec(preprocessed_folder, case_ids, **options)
    if spec.augmentation is None:
        spec = dataclasses.replace(spec, augmentation=AugmentationSettings())
    return build_loader(spec)


def make_validation_loader(
    preprocessed_folder: str | os.PathLike[str], case_ids: Sequence[str], **options: Any
) -> PatchLoader:
    """Endless unaugmented, foreground-oversampled patches of the validation cases, for the per-epoch pseudo-Dice;
    ``options`` are the fields of ``LoaderSpec`` but ``augmentation``."""
    if "augmentation" in options:
        raise TypeError("make_validation_loader() got an unexpected keyword argument 'augmentation'")
    return build_loader(LoaderSpec(preprocessed_folder, case_ids, **options))


__all__ = ["LoaderSpec", "build_loader", "deep_supervision_scales", "make_training_loader", "make_validation_loader"]
