"""On-disk form of a preprocessed case: ``CASE.npy`` + ``CASE_seg.npy`` (memory-mappable) + ``CASE.json`` (last).

Plain ``.npy`` files are memory-mapped by training, so drawing a random patch reads only the pages the patch
touches. A case whose image holds ``COMPRESS_FROM_BYTES`` or more (CT at full resolution) is written as
``CASE.b2nd`` + ``CASE_seg.b2nd`` instead: blosc2, lossless, in chunks of the configuration's patch size, so that a
patch read decompresses only the blocks it touches (see docs/preprocessing.md, "Storage", for the numbers).

Each file is written through ``atomic_path``; the sidecar ``CASE.json`` is written last, so its presence means the
case is complete. A run killed half-way leaves at most arrays without a sidecar (redone on the next run) and
hidden ``.CASE.*.partial*`` temporaries (deleted on the next run).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from autoseg.io import case_arrays
from autoseg.io.case_arrays import open_array, read_array, save_array
from autoseg.records.preprocessed_case import PreprocessedCase
from autoseg.utils.files import atomic_path


def case_paths(folder: str | os.PathLike[str], identifier: str) -> tuple[Path, Path, Path]:
    """``(CASE.npy, CASE_seg.npy, CASE.json)`` inside ``folder``, named by ``autoseg.records.preprocessed_case``."""
    return PreprocessedCase.at(folder, identifier).paths


def _write_sidecar(properties: dict, path: Path) -> None:
    # Compact JSON (no indentation): the class locations are up to 10k triples per class, which indented JSON
    # would spread over ~40k lines per case. The properties are plain Python types already (to_jsonable's
    # recursion over the location lists took 40 ms per case). Written through atomic_path like every artifact.
    text = json.dumps(properties, separators=(",", ":"), allow_nan=False) + "\n"
    with atomic_path(path, durable=False) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_preprocessed_case(
    folder: str | os.PathLike[str],
    identifier: str,
    data: np.ndarray,
    segmentation: np.ndarray | None,
    properties: dict,
    *,
    patch_size: Sequence[int] | None = None,
    compress_from_bytes: int | None = None,
) -> None:
    """Store one case: image (float32), labels (int8, if any), then the sidecar that marks completion.

    An image of ``compress_from_bytes`` (default ``case_arrays.COMPRESS_FROM_BYTES``) or more is stored compressed
    in chunks of ``patch_size`` (the trailing axes), the labels in the same format; files of the other format left
    by an earlier run are removed. Preprocessed cases can always be regenerated and are validated before reuse, so
    they are written atomically but without fsync, which cost about a third of preprocessing time."""
    case = PreprocessedCase.at(folder, identifier)
    data = np.ascontiguousarray(data, dtype=np.float32)
    threshold = case_arrays.COMPRESS_FROM_BYTES if compress_from_bytes is None else compress_from_bytes
    compressed = data.nbytes >= threshold
    with contextlib.suppress(FileNotFoundError):
        case.properties_path.unlink()  # an overwrite must not leave a stale "complete" marker next to new arrays
    for path in case.array_paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # one format per case: nothing of an earlier run in the other format may remain
    image_path = case.compressed_image_path if compressed else case.image_path
    save_array(data, image_path, patch_size=patch_size)
    if segmentation is not None:
        labels_path = case.compressed_segmentation_path if compressed else case.segmentation_path
        save_array(np.ascontiguousarray(segmentation, dtype=np.int8), labels_path, patch_size=patch_size)
    _write_sidecar(properties, case.properties_path)


def read_properties(folder: str | os.PathLike[str], identifier: str) -> dict:
    """The sidecar ``CASE.json`` of a preprocessed case."""
    return PreprocessedCase.at(folder, identifier).read_properties()


def load_preprocessed_case(
    folder: str | os.PathLike[str], identifier: str, *, memory_map: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(data, seg or None, properties)``; arrays opened read-only for partial reads (memory-mapped ``.npy`` or
    ``blosc2.NDArray``) unless ``memory_map=False``, which reads them into memory."""
    case = PreprocessedCase.at(folder, identifier)
    load = open_array if memory_map else read_array
    data = load(case.stored_image_path)
    segmentation = None
    if case.stored_segmentation_path.is_file():
        segmentation = load(case.stored_segmentation_path)
    return data, segmentation, read_properties(folder, identifier)


def read_complete_case_properties(
    folder: str | os.PathLike[str], identifier: str, *, expect_segmentation: bool, channels: int
) -> dict | None:
    """The sidecar of a finished, valid case, or None: the sidecar must parse and the arrays must open with the
    shapes and dtypes it records. Only array headers are read (either format), so this is cheap."""
    case = PreprocessedCase.at(folder, identifier)
    try:
        properties = case.read_properties()
        shape = tuple(int(size) for size in properties["shape_after_resampling"])
        data = open_array(case.stored_image_path)
        if data.dtype != np.float32 or data.shape != (channels, *shape):
            return None
        if expect_segmentation:
            segmentation = open_array(case.stored_segmentation_path)
            if segmentation.dtype != np.int8 or segmentation.shape != (1, *shape):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return properties


def is_case_complete(
    folder: str | os.PathLike[str], identifier: str, *, expect_segmentation: bool, channels: int
) -> bool:
    """Whether ``read_complete_case_properties`` finds a finished, valid case."""
    return read_complete_case_properties(
        folder, identifier, expect_segmentation=expect_segmentation, channels=channels
    ) is not None


def remove_partial_files(folder: str | os.PathLike[str], names: Iterable[str] | None = None) -> int:
    """Delete temporaries left by a killed run (``.NAME.*.partial*``); returns how many were removed.

    With ``names`` only the temporaries of those file names: a part of a split run (``--part-id``) must not delete
    the temporaries another part, running at the same time, is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    patterns = [".*.partial*"] if names is None else [f".{glob.escape(name)}.*.partial*" for name in names]
    for path in (path for pattern in patterns for path in folder.glob(pattern)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
