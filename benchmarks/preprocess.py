"""Benchmark: wall time and peak memory of ``autoseg preprocess`` next to nnU-Net v2's ``nnUNetv2_preprocess``.

Both tools preprocess the same shared datasets with the same worker count, on the same plan: the autoseg plan is
derived from nnU-Net's own ``nnUNetPlans.json`` (target spacing, transposition, normalisation), so both do the same
work (read, crop, normalise, resample, sample class locations, store, copy the ground truth). Fingerprinting and
planning are set-up and not timed, for either tool. Runs alternate between the tools and the median is reported,
because the machine is shared and timings are noisy.

Usage (nnU-Net installed by ``../shared/tools/nnunet-peer/setup.sh``, relative to the project root):

    python benchmarks/preprocess.py [--datasets Dataset004_Hippocampus Dataset018_HC18] [--workers 2] [--repeats 3]
        [--scratch FOLDER] [--datasets-root FOLDER] [--nnunet-venv FOLDER]

The shared datasets and nnU-Net's virtualenv default to ``$AUTOSEG_TEST_DATA`` (else ``../shared/datasets``) and
``$NNUNET_PEER_VENV`` (else the setup script's default); see ``benchmarks/locations.py``.

Peak memory is sampled every 0.1 s over the whole process tree of each run: "sum" is the largest total over all
processes at one moment (what the machine must hold), "largest process" the largest single process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from locations import (
    NNUNET_SETUP,
    REPOSITORY,
    add_datasets_root_argument,
    add_nnunet_venv_argument,
    require_datasets,
    scratch_folder,
)
from provenance import provenance

DEFAULT_DATASETS = ("Dataset004_Hippocampus", "Dataset018_HC18")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_group_rss(group: int) -> tuple[int, int]:
    """(sum, max) resident bytes over the live processes of process group ``group``."""
    total = largest = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ... ; rss (pages) is field 24 of stat, index 21 here.
        if int(fields[2]) != group:
            continue
        rss = int(fields[21]) * PAGE_SIZE
        total += rss
        largest = max(largest, rss)
    return total, largest


def timed_run(command: list[str] | str, *, environment: dict[str, str], shell: bool = False) -> dict:
    """Run a command in its own process group; wall seconds and peak RSS of the group (sampled every 0.1 s)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=environment, shell=shell, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, executable="/bin/bash" if shell else None,
    )
    peaks = {"sum": 0, "largest": 0}

    def sample() -> None:
        while process.poll() is None:
            total, largest = process_group_rss(process.pid)
            peaks["sum"] = max(peaks["sum"], total)
            peaks["largest"] = max(peaks["largest"], largest)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed ({process.returncode}):\n{output.decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "peak_rss_sum_mb": peaks["sum"] / 2**20, "peak_rss_largest_mb": peaks["largest"] / 2**20}


def nnunet_environment(scratch: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        nnUNet_raw=str(scratch / "nnUNet_raw"),
        nnUNet_preprocessed=str(scratch / "nnUNet_preprocessed"),
        nnUNet_results=str(scratch / "nnUNet_results"),
        nnUNet_compile="f",
    )
    return environment


def nnunet_shell(venv: Path, scratch: Path, command: str) -> str:
    """A bash line: activate nnU-Net's virtualenv, then point it at our own folders."""
    variables = nnunet_environment(scratch)
    exports = " ".join(f"{key}={shlex.quote(variables[key])}"
                       for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    return f"source {shlex.quote(str(venv / 'bin' / 'activate'))} >/dev/null && export {exports} && {command}"


def prepare_nnunet(dataset: str, *, scratch: Path, venv: Path, workers: int, datasets: Path) -> dict:
    """Link the raw dataset, fingerprint and plan with nnU-Net (not timed); return its plans."""
    environment = nnunet_environment(scratch)
    raw = scratch / "nnUNet_raw"
    raw.mkdir(parents=True, exist_ok=True)
    (scratch / "nnUNet_preprocessed").mkdir(exist_ok=True)
    link = raw / dataset
    if not link.exists():
        link.symlink_to(datasets / dataset)
    plans_path = scratch / "nnUNet_preprocessed" / dataset / "nnUNetPlans.json"
    if not plans_path.is_file():
        number = int(dataset[len("Dataset"):len("Dataset") + 3])
        command = f"nnUNetv2_extract_fingerprint -d {number} -np {workers} && nnUNetv2_plan_experiment -d {number}"
        timed_run(nnunet_shell(venv, scratch, command), environment=environment, shell=True)
    return json.loads(plans_path.read_text())


def nnunet_configuration_name(plans: dict) -> str:
    """The configuration a user of this dataset trains first: 3d_fullres for 3D data, 2d for 2D data."""
    return "3d_fullres" if "3d_fullres" in plans["configurations"] else "2d"


def autoseg_plans_from_nnunet(nnunet_plans: dict, fingerprint: dict, configuration_name: str) -> dict:
    """An autoseg plans.json with the same preprocessing decisions as nnU-Net's plan (docs/design.md schema)."""
    source = nnunet_plans["configurations"][configuration_name]
    dimension = len(source["patch_size"])
    spacing = [float(v) for v in source["spacing"]]
    if dimension == 2:
        spacing = [float(nnunet_plans["original_median_spacing_after_transp"][0]), *spacing]
    normalization = []
    for channel, (scheme, use_mask) in enumerate(
        zip(source["normalization_schemes"], source["use_mask_for_norm"], strict=True)
    ):
        if scheme == "CTNormalization":
            statistics_ = nnunet_plans["foreground_intensity_properties_per_channel"][str(channel)]
            normalization.append({"scheme": "ct", "clip_low": statistics_["percentile_00_5"],
                                  "clip_high": statistics_["percentile_99_5"], "mean": statistics_["mean"],
                                  "std": statistics_["std"]})
        elif scheme == "NoNormalization":
            normalization.append({"scheme": "none"})
        else:
            normalization.append({"scheme": "zscore", "use_mask": bool(use_mask)})
    target = spacing if dimension == 3 else spacing[1:]
    anisotropic = dimension == 3 and max(target) > 3 * min(target)
    return {
        "dataset_name": nnunet_plans["dataset_name"],
        "plans_name": "from_nnUNetPlans",
        "preset": "default",
        "gpu_memory_gb": 8,
        "transpose_forward": list(nnunet_plans["transpose_forward"]),
        "transpose_backward": list(nnunet_plans["transpose_backward"]),
        "configurations": {
            configuration_name: {
                "dimension": dimension,
                "spacing": spacing,
                "median_shape": [int(v) for v in fingerprint.median_shape_after_crop or [1, 1, 1]],
                "patch_size": [int(v) for v in source["patch_size"]],
                "batch_size": int(source["batch_size"]),
                "network": {},
                "normalization": normalization,
                "resampling": {"anisotropic": anisotropic, "image_order": 3, "label_order": 1,
                               "coarse_axis_order": 0},
                "batch_dice": bool(source.get("batch_dice", False)),
            }
        },
    }


def prepare_autoseg(dataset: str, *, scratch: Path, nnunet_plans: dict, configuration: str, workers: int,
                    datasets: Path) -> Path:
    """Fingerprint with autoseg (not timed) and write the nnU-Net-equivalent plans.json; return the work folder."""
    sys.path.insert(0, str(REPOSITORY))
    from autoseg.data.raw_folder import load_raw_dataset
    from autoseg.fingerprint.compute import compute_fingerprint
    from autoseg.records.work_folder import WorkFolder
    from autoseg.utils.files import write_json

    work_dir = scratch / "autoseg_work"
    raw = load_raw_dataset(datasets / dataset)
    fingerprint = compute_fingerprint(raw, WorkFolder.for_dataset(work_dir, raw.root), workers=workers)
    plans = autoseg_plans_from_nnunet(nnunet_plans, fingerprint, configuration)
    write_json(work_dir / dataset / "plans.json", plans)
    return work_dir


def measure_storage(folder: Path, patch_size: list[int], *, cases: int = 20, reads: int = 300) -> dict:
    """Disk size and random-patch read time of the stored cases as raw ``.npy`` (memory-mapped) versus compressed
    ``.npz`` (zlib; must inflate the whole case) and blosc2 (zstd, chunked, what nnU-Net v2 stores).

    The page cache is warm for every format (the files were just written), as during training after the first
    epoch; on a cold disk the smaller compressed files would gain a little.
    """
    import tempfile

    import numpy as np

    identifiers = sorted(path.stem for path in folder.glob("*.json"))[:cases]
    arrays = {identifier: np.load(folder / f"{identifier}.npy") for identifier in identifiers}
    generator = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        scratch = Path(scratch)
        writers = {
            "npy (mmap)": lambda identifier, array: (folder / f"{identifier}.npy"),
            "npz (zlib)": lambda identifier, array: _write_npz(scratch / f"{identifier}.npz", array),
        }
        readers = {
            "npy (mmap)": lambda path, window: np.array(np.load(path, mmap_mode="r")[window]),
            "npz (zlib)": lambda path, window: np.load(path)["data"][window],
        }
        try:
            import blosc2

            def write_blosc2(path: Path, array: np.ndarray) -> Path:
                chunks = tuple(min(size, 2 * patch) for size, patch in zip(array.shape, [1, *patch_size], strict=True))
                blosc2.asarray(np.ascontiguousarray(array), urlpath=str(path), mode="w", chunks=chunks,
                               cparams={"codec": blosc2.Codec.ZSTD, "clevel": 8})
                return path

            writers["blosc2 (zstd)"] = lambda identifier, array: write_blosc2(scratch / f"{identifier}.b2nd", array)
            readers["blosc2 (zstd)"] = lambda path, window: blosc2.open(str(path), mode="r")[window]
        except ImportError:
            pass
        for name, write in writers.items():
            paths = {identifier: write(identifier, array) for identifier, array in arrays.items()}
            size = sum(Path(path).stat().st_size for path in paths.values())
            start = time.perf_counter()
            for _ in range(reads):
                identifier = identifiers[int(generator.integers(len(identifiers)))]
                shape = arrays[identifier].shape[1:]
                patch = [min(p, s) for p, s in zip(patch_size, shape, strict=True)]
                origin = [int(generator.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
                window = (slice(None), *(slice(o, o + p) for o, p in zip(origin, patch, strict=True)))
                readers[name](paths[identifier], window)
            results[name] = {"disk_mb": size / 2**20, "patch_read_ms": 1000 * (time.perf_counter() - start) / reads}
    return results


def measure_resampling() -> None:
    """Resampling alone, one process, best of a few runs: autoseg's separable sparse operators next to
    ``scipy.ndimage.zoom`` and ``skimage.transform.resize`` (what nnU-Net v2 uses), images (cubic) and labels
    (linear on one-hot, two classes)."""
    import numpy as np
    import scipy.ndimage
    from skimage.transform import resize

    sys.path.insert(0, str(REPOSITORY))
    from autoseg.transforms.resampling import resample_channels, resample_segmentation

    def best_ms(function, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    def time_case(name: str, shape: tuple[int, ...], new_shape: tuple[int, ...]) -> None:
        generator = np.random.default_rng(0)
        image = generator.random(shape).astype(np.float32)
        labels = np.zeros(shape, dtype=np.int8)
        labels[tuple(slice(size // 4, 3 * size // 4) for size in shape)] = 1
        labels[tuple(slice(size // 3, size // 2) for size in shape)] = 2
        in_plane = shape[0] == 1
        axes = slice(1, None) if in_plane else slice(None)
        image_orders = (None, 3, 3) if in_plane else (3, 3, 3)
        label_orders = (None, 1, 1) if in_plane else (1, 1, 1)
        factors = [new / old for new, old in zip(new_shape[axes], shape[axes], strict=True)]
        source = image[0] if in_plane else image
        ours = best_ms(lambda: resample_channels(image[None], new_shape, axis_orders=image_orders))
        zoom = best_ms(lambda: scipy.ndimage.zoom(source, factors, order=3, grid_mode=True, mode="grid-constant"))
        skimage = best_ms(lambda: resize(source, new_shape[axes], order=3, mode="edge", anti_aliasing=False))
        ours_labels = best_ms(lambda: resample_segmentation(labels, new_shape, axis_orders=label_orders))
        label_source = labels[0] if in_plane else labels
        skimage_labels = best_ms(lambda: [
            resize((label_source == value).astype(float), new_shape[axes], order=1, mode="edge",
                   anti_aliasing=False) >= 0.5 for value in (1, 2)])
        print(f"{name:<26} image: autoseg {ours:7.1f} ms, scipy zoom {zoom:7.1f}, skimage {skimage:7.1f} | "
              f"labels: autoseg {ours_labels:6.1f} ms, skimage one-hot {skimage_labels:6.1f}", flush=True)

    time_case("2D 540x800 -> 1090x1614", (1, 540, 800), (1, 1090, 1614))
    time_case("2D 540x800 -> 270x400", (1, 540, 800), (1, 270, 400))
    time_case("3D 128^3 -> 166^3", (128, 128, 128), (166, 166, 166))


def _write_npz(path: Path, array) -> Path:
    import numpy as np

    np.savez_compressed(path, data=array)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=scratch_folder("autoseg_preprocess_benchmark"),
                        help="default: autoseg_preprocess_benchmark in the system's temporary folder")
    add_datasets_root_argument(parser)
    add_nnunet_venv_argument(parser)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--resampling-only", action="store_true", help="only time resampling against scipy/skimage")
    parser.add_argument("--storage-only", action="store_true",
                        help="only measure storage formats on an earlier run's autoseg output in --scratch")
    args = parser.parse_args()
    if not (args.nnunet_venv / "bin" / "activate").is_file() and not args.resampling_only:
        parser.error(f"{args.nnunet_venv}: nnU-Net's virtualenv not found; run {NNUNET_SETUP} (from the project "
                     "root), or name it with --nnunet-venv or NNUNET_PEER_VENV")
    if not args.resampling_only and not args.storage_only:
        require_datasets(args.datasets_root, args.datasets)
    args.scratch.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.resampling_only:
        measure_resampling()
        return 0
    if args.storage_only:
        for dataset in args.datasets:
            plans = json.loads((args.scratch / "nnUNet_preprocessed" / dataset / "nnUNetPlans.json").read_text())
            configuration = nnunet_configuration_name(plans)
            patch_size = plans["configurations"][configuration]["patch_size"]
            folder = args.scratch / "autoseg_work" / dataset / "preprocessed" / configuration
            for name, numbers in measure_storage(folder, [1, *patch_size][-3:]).items():
                print(f"{dataset:<24}{name:<16}{numbers['disk_mb']:>8.1f} MB{numbers['patch_read_ms']:>9.2f} ms/patch")
        return 0
    for dataset in args.datasets:
        nnunet_plans = prepare_nnunet(dataset, scratch=args.scratch, venv=args.nnunet_venv, workers=args.workers,
                                      datasets=args.datasets_root)
        configuration = nnunet_configuration_name(nnunet_plans)
        work_dir = prepare_autoseg(dataset, scratch=args.scratch, nnunet_plans=nnunet_plans,
                                   configuration=configuration, workers=args.workers, datasets=args.datasets_root)
        number = int(dataset[len("Dataset"):len("Dataset") + 3])
        nnunet_output = args.scratch / "nnUNet_preprocessed" / dataset
        nnunet_command = nnunet_shell(args.nnunet_venv, args.scratch,
                                      f"nnUNetv2_preprocess -d {number} -c {configuration} -np {args.workers}")
        autoseg_command = [sys.executable, "-m", "autoseg", "preprocess", str(args.datasets_root / dataset),
                           "-c", configuration, "--work-dir", str(work_dir), "--workers", str(args.workers)]
        runs: dict[str, list[dict]] = {"nnunet": [], "autoseg": []}
        for repeat in range(args.repeats):
            order = ("nnunet", "autoseg") if repeat % 2 == 0 else ("autoseg", "nnunet")
            for tool in order:
                if tool == "nnunet":
                    for stale in (nnunet_output / f"nnUNetPlans_{configuration}", nnunet_output / "gt_segmentations"):
                        shutil.rmtree(stale, ignore_errors=True)
                    runs[tool].append(timed_run(nnunet_command, environment=nnunet_environment(args.scratch),
                                                shell=True))
                else:
                    for stale in (work_dir / dataset / "preprocessed", work_dir / dataset / "ground_truth"):
                        shutil.rmtree(stale, ignore_errors=True)
                    runs[tool].append(timed_run(autoseg_command, environment=dict(os.environ)))
                print(f"{dataset} {configuration} run {repeat + 1} {tool}: {runs[tool][-1]}", flush=True)
        summary = {
            tool: {key: statistics.median(run[key] for run in tool_runs) for key in tool_runs[0]}
            for tool, tool_runs in runs.items()
        }
        summary["ratio_wall"] = summary["autoseg"]["wall_s"] / summary["nnunet"]["wall_s"]
        summary["configuration"] = configuration
        summary["runs"] = runs
        patch_size = nnunet_plans["configurations"][configuration]["patch_size"]
        if len(patch_size) == 2:
            patch_size = [1, *patch_size]
        summary["storage"] = measure_storage(work_dir / dataset / "preprocessed" / configuration, patch_size)
        results[dataset] = summary
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"\nworkers={args.workers}, repeats={args.repeats} (median), load average {load[0]:.1f} "
          "(shared machine: timings are noisy)")
    print(f"{'dataset':<24}{'config':<12}{'nnU-Net s':>10}{'autoseg s':>10}{'ratio':>7}"
          f"{'nnU-Net MB':>12}{'autoseg MB':>12}")
    for dataset, summary in results.items():
        print(f"{dataset:<24}{summary['configuration']:<12}{summary['nnunet']['wall_s']:>10.2f}"
              f"{summary['autoseg']['wall_s']:>10.2f}{summary['ratio_wall']:>7.2f}"
              f"{summary['nnunet']['peak_rss_sum_mb']:>12.0f}{summary['autoseg']['peak_rss_sum_mb']:>12.0f}")
    print("MB = peak resident memory summed over the process tree; ratio = autoseg / nnU-Net wall time (goal <= 0.5)")
    print("\nstorage of the preprocessed images (first 20 cases, random patches of the plan's patch size, warm cache):")
    for dataset, summary in results.items():
        for name, numbers in summary["storage"].items():
            print(f"  {dataset:<24}{name:<16}{numbers['disk_mb']:>8.1f} MB{numbers['patch_read_ms']:>9.2f} ms/patch")
    if args.output:
        command = (f"python benchmarks/preprocess.py --datasets {' '.join(args.datasets)} --workers {args.workers} "
                   f"--repeats {args.repeats}")
        record = {"command": command, "provenance": provenance(), "results": results}
        args.output.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
