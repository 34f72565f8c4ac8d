"""On-disk form of a preprocessed case: ``CASE.npy`` + ``CASE_seg.npy`` (memory-mappable) + ``CASE.json`` (last).

Plain ``.npy`` files are memory-mapped by training (``np.load(mmap_mode="r")``), so drawing a random patch reads only
the pages the patch touches. Compression (``.npz``, blosc2) was measured and rejected for the default: it makes
every patch read decompress the whole case (see docs/preprocessing.md for the numbers).

Each file is written through ``atomic_path``; the sidecar ``CASE.json`` is written last, so its presence means the
case is complete. A run killed half-way leaves at most arrays without a sidecar (redone on the next run) and
hidden ``.CASE.*.partial*`` temporaries (deleted on the next run).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from autoseg.records.preprocessed_case import PreprocessedCase
from autoseg.utils.files import atomic_path


def case_paths(folder: str | os.PathLike[str], identifier: str) -> tuple[Path, Path, Path]:
    """``(CASE.npy, CASE_seg.npy, CASE.json)`` inside ``folder``, named by ``autoseg.records.preprocessed_case``."""
    return PreprocessedCase.at(folder, identifier).paths


# Preprocessed cases can always be regenerated and are validated (shapes against the sidecar) before reuse, so
# they are written atomically but without fsync, which cost about a third of preprocessing time.
def _save_array(array: np.ndarray, path: Path) -> None:
    with atomic_path(path, durable=False) as temporary:
        np.save(temporary, array, allow_pickle=False)


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
) -> None:
    """Store one case: image (float32), labels (int8, if any), then the sidecar that marks completion."""
    data_path, segmentation_path, sidecar_path = case_paths(folder, identifier)
    with contextlib.suppress(FileNotFoundError):
        sidecar_path.unlink()  # an overwrite must not leave a stale "complete" marker next to new arrays
    _save_array(np.ascontiguousarray(data, dtype=np.float32), data_path)
    if segmentation is not None:
        _save_array(np.ascontiguousarray(segmentation, dtype=np.int8), segmentation_path)
    _write_sidecar(properties, sidecar_path)


def read_properties(folder: str | os.PathLike[str], identifier: str) -> dict:
    """The sidecar ``CASE.json`` of a preprocessed case."""
    return PreprocessedCase.at(folder, identifier).read_properties()


def load_preprocessed_case(
    folder: str | os.PathLike[str], identifier: str, *, memory_map: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(data, seg or None, properties)``; arrays memory-mapped read-only unless ``memory_map=False``."""
    data_path, segmentation_path, _ = case_paths(folder, identifier)
    mode = "r" if memory_map else None
    data = np.load(data_path, mmap_mode=mode, allow_pickle=False)
    segmentation = None
    if segmentation_path.is_file():
        segmentation = np.load(segmentation_path, mmap_mode=mode, allow_pickle=False)
    return data, segmentation, read_properties(folder, identifier)


def read_complete_case_properties(
    folder: str | os.PathLike[str], identifier: str, *, expect_segmentation: bool, channels: int
) -> dict | None:
    """The sidecar of a finished, valid case, or None: the sidecar must parse and the arrays must open with the
    shapes and dtypes it records. Only array headers are read (memory-mapped), so this is cheap."""
    case = PreprocessedCase.at(folder, identifier)
    data_path, segmentation_path = case.image_path, case.segmentation_path
    try:
        properties = case.read_properties()
        shape = tuple(int(size) for size in properties["shape_after_resampling"])
        data = np.load(data_path, mmap_mode="r", allow_pickle=False)
        if data.dtype != np.float32 or data.shape != (channels, *shape):
            return None
        if expect_segmentation:
            segmentation = np.load(segmentation_path, mmap_mode="r", allow_pickle=False)
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


def remove_partial_files(folder: str | os.PathLike[str]) -> int:
    """Delete temporaries left by a killed run (``.NAME.*.partial*``); returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(".*.partial*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
