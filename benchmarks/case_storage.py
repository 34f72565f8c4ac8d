"""Benchmark: bytes per case and random-patch read time of preprocessed cases, plain ``.npy`` against blosc2.

Measures what ``autoseg.io.case_arrays`` chooses between (the threshold ``COMPRESS_FROM_BYTES``), on the cases of an
``autoseg preprocess`` output folder, in whichever format they were stored: each case is written again in both
formats into a scratch folder, as preprocessing writes it (``.npy``; blosc2 zstd in chunks of the plan's patch size),
then random patches of the plan's patch size are read from each (warm page cache: the files were just written), and
optionally (``--batches``) whole augmented training batches are drawn, as a training loader worker does.

Usage:

    python benchmarks/case_storage.py WORK/DatasetXXX_Name --configuration 3d_fullres [--cases 2] [--reads 50]
        [--batches 5] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from autoseg.io.case_arrays import open_array, read_array  # noqa: E402
from autoseg.preprocessing.storage import write_preprocessed_case  # noqa: E402
from autoseg.records.plans import Configuration, load_plans  # noqa: E402
from autoseg.records.preprocessed_case import PreprocessedCase, preprocessed_case_ids  # noqa: E402
from autoseg.training.data_loading import make_training_loader  # noqa: E402


def patch_read_ms(path: Path, patch_size: list[int], reads: int, seed: int = 0) -> float:
    """Median milliseconds to read one random patch (all channels) from the array at ``path``."""
    array = open_array(path)
    generator = np.random.default_rng(seed)
    shape = array.shape[1:]
    patch = [1] * (len(shape) - len(patch_size)) + [min(p, s) for p, s in zip(patch_size, shape[-len(patch_size):],
                                                                                strict=True)]
    times = []
    for _ in range(reads):
        origin = [int(generator.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
        window = (slice(None), *(slice(o, o + p) for o, p in zip(origin, patch, strict=True)))
        start = time.perf_counter()
        np.asarray(array[window]).sum()  # touch every voxel, as copying into a batch does
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def loader_ms_per_batch(folder: Path, identifier: str, configuration: Configuration, batches: int) -> float:
    """Median milliseconds per training batch (the plan's batch size, augmented, in this process) of one case."""
    times = []
    with make_training_loader(folder, [identifier], configuration=configuration,
                              batch_size=configuration.batch_size, num_workers=0, seed=0) as loader:
        for _ in range(batches):
            start = time.perf_counter()
            next(loader)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure_case(case: PreprocessedCase, configuration: Configuration, scratch: Path, reads: int,
                 batches: int) -> dict:
    """The case stored again in each format (as preprocessing stores it), then its sizes and read times."""
    image = read_array(case.stored_image_path)
    labels = read_array(case.stored_segmentation_path)
    patch_size = list(configuration.patch_size)
    result: dict = {"identifier": case.identifier, "shape": list(image.shape), "stored_as": case.stored_image_path.name}
    for name, threshold in (("npy", image.nbytes + 1), ("blosc2", 0)):
        folder = scratch / name
        start = time.perf_counter()
        write_preprocessed_case(folder, case.identifier, image, labels, case.read_properties(),
                                patch_size=patch_size, compress_from_bytes=threshold)
        stored = PreprocessedCase.at(folder, case.identifier)
        numbers = {
            "write_s": round(time.perf_counter() - start, 2),
            "image_mb": round(stored.stored_image_path.stat().st_size / 2**20, 1),
            "labels_mb": round(stored.stored_segmentation_path.stat().st_size / 2**20, 1),
            "image_patch_read_ms": round(patch_read_ms(stored.stored_image_path, patch_size, reads), 2),
            "labels_patch_read_ms": round(patch_read_ms(stored.stored_segmentation_path, patch_size, reads), 2),
        }
        assert np.array_equal(stored.open_image()[...], image), "storage must be lossless"
        if batches:
            numbers["loader_ms_per_batch"] = round(loader_ms_per_batch(folder, case.identifier, configuration,
                                                                       batches), 1)
        result[name] = numbers
        for path in stored.array_paths:
            path.unlink(missing_ok=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_folder", type=Path, help="WORK/DatasetXXX_Name (plans.json, preprocessed/)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--batches", type=int, default=0,
                        help="also time this many augmented training batches (plan's batch size) per format")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    plans = load_plans(args.work_folder / "plans.json")
    configuration = plans.configuration(args.configuration)
    folder = args.work_folder / "preprocessed" / plans.data_configuration(args.configuration)
    results = []
    with tempfile.TemporaryDirectory(dir=args.work_folder) as scratch:
        for identifier in preprocessed_case_ids(folder)[: args.cases]:
            case = PreprocessedCase.at(folder, identifier)
            results.append(measure_case(case, configuration, Path(scratch), args.reads, args.batches))
            print(json.dumps(results[-1]), flush=True)
    if args.output:
        summary = {"patch_size": list(configuration.patch_size), "cases": results}
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
