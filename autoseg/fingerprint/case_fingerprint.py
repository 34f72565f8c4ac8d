"""Fingerprint of one case: geometry, non-zero crop, class voxel counts and a foreground intensity sample."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from autoseg.fingerprint.intensity_statistics import sample_foreground
from autoseg.io.images import read_image
from autoseg.utils.nonzero_crop import nonzero_bounding_box


@dataclasses.dataclass(frozen=True)
class CaseRequest:
    """What a worker needs to fingerprint one case (plain data, so it crosses process boundaries cheaply)."""

    identifier: str
    images: tuple[str, ...]
    label: str
    ignore_label: int | None
    maximum_samples: int


@dataclasses.dataclass
class CaseFingerprint:
    """The per-case record stored in ``fingerprint.json`` plus the intensity samples (not stored)."""

    identifier: str
    spacing: list[float]
    shape: list[int]
    shape_after_crop: list[int]
    relative_size_after_crop: float
    class_voxels: dict[str, int]
    foreground_samples: list[np.ndarray]

    def record(self) -> dict:
        return {
            "spacing": self.spacing,
            "shape": self.shape,
            "shape_after_crop": self.shape_after_crop,
            "relative_size_after_crop": self.relative_size_after_crop,
            "class_voxels": self.class_voxels,
        }


def case_seed(identifier: str) -> int:
    """A seed that depends only on the case name, so samples do not depend on worker count or case order."""
    return zlib.crc32(identifier.encode("utf-8"))


def fingerprint_case(request: CaseRequest) -> CaseFingerprint:
    """Read one case and measure it.

    The crop is the bounding box of the filled non-zero mask (all channels OR'ed); ``relative_size_after_crop`` is
    the cropped volume over the original volume, which decides whether z-score normalisation uses the mask.
    Foreground is every labelled voxel except the ignore label; intensities are sampled inside it per channel.
    """
    channels = [read_image(path) for path in request.images]
    geometry = channels[0].geometry
    arrays = [channel.array for channel in channels]
    label = read_image(request.label).array
    label = np.rint(label).astype(np.int64) if label.dtype.kind == "f" else label.astype(np.int64)

    bbox = nonzero_bounding_box(arrays)
    shape_after_crop = [stop - start for start, stop in bbox]
    relative_size = float(np.prod(shape_after_crop, dtype=np.float64) / np.prod(geometry.shape, dtype=np.float64))

    values, counts = np.unique(label, return_counts=True)
    class_voxels = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True) if v != 0}

    foreground = label > 0
    if request.ignore_label is not None:
        foreground &= label != request.ignore_label
    seed = case_seed(request.identifier)
    samples = [
        sample_foreground(array[foreground], maximum_samples=request.maximum_samples, seed=seed + index)
        for index, array in enumerate(arrays)
    ]
    return CaseFingerprint(
        identifier=request.identifier,
        spacing=[float(v) for v in geometry.spacing],
        shape=[int(v) for v in geometry.shape],
        shape_after_crop=[int(v) for v in shape_after_crop],
        relative_size_after_crop=round(relative_size, 6),
        class_voxels=class_voxels,
        foreground_samples=samples,
    )


def fingerprint_case_in_worker(request: CaseRequest) -> CaseFingerprint:
    """Worker entry point: one SimpleITK thread per process, since the processes already use every core."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    return fingerprint_case(request)
