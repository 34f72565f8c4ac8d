"""Random patches of the preprocessed cases, cut at the size augmentation needs, foreground-oversampled.

Patches are read from memory-mapped ``CASE.npy``/``CASE_seg.npy`` (docs/design.md), so only the voxels of a patch
are touched; a large case stored compressed (``CASE.b2nd``) decompresses only the blocks a patch touches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from autoseg.errors import UserError
from autoseg.io.case_arrays import open_array
from autoseg.training.cases import TrainingCase


def forced_foreground_samples(batch_size: int, oversample_foreground: float) -> int:
    """How many samples of a batch are forced onto foreground: the last ``B - round(B * (1 - fraction))``.

    The reference's count (nnU-Net v2 ``_oversample_last_XX_percent``): with the default 0.33 that is 0 of 1, 1 of
    2-4, 2 of 5-7, 3 of 8-10 and 4 of 11-13. Python's ``round`` (half to even) is part of the rule.
    """
    return int(batch_size) - round(int(batch_size) * (1 - oversample_foreground))


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
        cases: Sequence[TrainingCase],
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
        self._open: OrderedDict[str, tuple[Any, Any, Any | None]] = OrderedDict()

    def set_thread_id(self, thread_id: int) -> None:
        """Called by batchgenerators in each worker; nothing to do (see the class docstring)."""

    def __iter__(self) -> PatchSampler:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.sample_batch()

    MAXIMUM_OPEN_CASES = 64

    def _arrays(self, case: TrainingCase) -> tuple[Any, Any, Any | None]:
        """Image, labels and (cascade) the previous stage's label map, opened for partial reads (memory-mapped
        ``.npy`` or ``blosc2.NDArray``)."""
        if case.identifier in self._open:
            self._open.move_to_end(case.identifier)
        else:
            image = open_array(case.image_path)
            segmentation = open_array(case.segmentation_path)
            if image.ndim != 4 or segmentation.shape != (1, *image.shape[1:]):
                raise UserError(
                    f"{case.image_path} has shape {image.shape} and its segmentation {segmentation.shape}; expected"
                    " (C, z, y, x) and (1, z, y, x)"
                )
            previous = None
            if case.previous_stage_path is not None:
                previous = open_array(case.previous_stage_path)
                if previous.shape != segmentation.shape:
                    raise UserError(
                        f"{case.previous_stage_path} has shape {previous.shape}, its case {segmentation.shape}: "
                        "the previous stage's segmentations are stale; delete the folder to make them again"
                    )
            self._open[case.identifier] = (image, segmentation, previous)
            if len(self._open) > self.MAXIMUM_OPEN_CASES:
                self._open.popitem(last=False)
        return self._open[case.identifier]

    def _foreground_location(self, case: TrainingCase) -> np.ndarray | None:
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

    def _centre(self, case: TrainingCase, forced: bool) -> np.ndarray | None:
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
