"""The arrays of a preprocessed case on disk: plain ``.npy`` (memory-mapped) or chunked blosc2 ``.b2nd`` (compressed).

Small cases are stored as ``.npy`` and memory-mapped, so a random patch reads only the pages it touches. Large cases
(CT: ~150-310 MB of float32 per case at full resolution) are stored as a blosc2 NDArray (zstd, lossless) in chunks
the size of a training patch, cut into small blocks: slicing one patch decompresses only the blocks it touches, never
the whole case. Which format a file has is told by its ending; ``open_array`` opens either for partial reads
(``array[window]`` gives a numpy array) and ``read_array`` reads a whole array into memory.

Example:
    >>> import numpy as np
    >>> save_array(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), "case.b2nd", patch_size=[2, 2, 2])
    >>> array = open_array("case.b2nd")
    >>> array.shape, array[:, 1, 1:3, 0].tolist()
    ((1, 2, 3, 4), [[16.0, 20.0]])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from autoseg.utils.files import atomic_path

NPY_ENDING = ".npy"
COMPRESSED_ENDING = ".b2nd"

# Cases whose image holds at least this many bytes are stored compressed (docs/preprocessing.md, "Storage"): the
# largest Hippocampus case holds 0.4 MB, the largest HC18 case about 11 MB, and they stay memory-mapped `.npy`; a CT
# case at full resolution (150-310 MB) shrinks 9x on the CT phantom, and a random patch costs 5-14 ms to decompress.
COMPRESS_FROM_BYTES = 64 * 2**20

# Blocks (the unit blosc2 decompresses) of 16 x 32 x 32 voxels: a patch read decompresses little beyond the patch
# (measured: 39 ms per 96x160x160 patch against 57 ms with blosc2's default blocks of whole 160x160 planes).
_BLOCK = (16, 32, 32)
# zstd at level 3 rather than nnU-Net v2's 8: on a CT phantom case (1x145x526x526) 17.5 MB against 17.0 MB, but
# written in 1.0 s against 6.0 s (one thread), with the same patch-read time (docs/preprocessing.md, "Storage").
_COMPRESSION = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "nthreads": 1}
_DECOMPRESSION = {"nthreads": 1}  # loader workers are processes already


def chunks_and_blocks(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks of one channel and one patch (``patch_size`` has the trailing 2 or 3 axes), blocks of at most
    16 x 32 x 32 voxels; both clipped to ``shape`` ``(C, z, y, x)``.

    Example:
        >>> chunks_and_blocks((2, 200, 512, 512), [96, 160, 160])
        ((1, 96, 160, 160), (1, 16, 32, 32))
        >>> chunks_and_blocks((1, 30, 512, 512), [512, 512])
        ((1, 1, 512, 512), (1, 1, 32, 32))
    """
    spatial = [int(size) for size in shape[1:]]
    patch = [1] * (len(spatial) - len(patch_size)) + [int(size) for size in patch_size]
    chunks = [max(1, min(size, extent)) for size, extent in zip(patch, spatial, strict=True)]
    blocks = [min(chunk, limit) for chunk, limit in zip(chunks, _BLOCK[-len(chunks):], strict=True)]
    return (1, *chunks), (1, *blocks)


def save_array(array: np.ndarray, path: str | os.PathLike[str], *, patch_size: Sequence[int] | None = None) -> None:
    """Write ``array`` atomically (without fsync: preprocessed data can be regenerated) as ``.npy`` or, for a path
    ending in ``.b2nd``, compressed in chunks of ``patch_size`` (default: the whole spatial extent)."""
    path = Path(path)
    with atomic_path(path, durable=False) as temporary:
        if path.name.endswith(COMPRESSED_ENDING):
            chunks, blocks = chunks_and_blocks(array.shape, patch_size or array.shape[1:])
            blosc2.asarray(np.ascontiguousarray(array), urlpath=str(temporary), mode="w", chunks=chunks,
                           blocks=blocks, cparams=dict(_COMPRESSION))
        else:
            np.save(temporary, array, allow_pickle=False)


def open_array(path: str | os.PathLike[str]) -> Any:
    """The array at ``path`` opened read-only for partial reads: a memory-mapped ``np.ndarray`` for ``.npy``, a
    ``blosc2.NDArray`` for ``.b2nd`` (``shape``, ``dtype``, ``ndim``; indexing returns a numpy array and decompresses
    only the blocks it touches). ``OSError``/``ValueError`` when the file is missing or damaged."""
    if str(path).endswith(COMPRESSED_ENDING):
        try:
            return blosc2.open(str(path), mode="r", dparams=dict(_DECOMPRESSION))
        except (RuntimeError, KeyError, TypeError) as error:  # blosc2 reports a damaged frame as RuntimeError
            raise ValueError(f"{path}: not a readable blosc2 array ({error})") from None
    return np.load(path, mmap_mode="r", allow_pickle=False)


def read_array(path: str | os.PathLike[str]) -> np.ndarray:
    """The whole array at ``path`` (either format) in memory."""
    if str(path).endswith(COMPRESSED_ENDING):
        return open_array(path)[...]
    return np.load(path, allow_pickle=False)
