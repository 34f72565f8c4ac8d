"""Peak memory of preprocessing and predicting one large CT-like volume (default 600x512x512), measured.

Writes a synthetic int16 volume (an ellipsoid "body" of soft tissue with a brighter "organ" in air, with noise) and a
model folder with a tiny randomly initialised 3D U-Net (3 classes, patch 64x128x128, the volume's own spacing so
nothing is resampled), then runs in fresh processes:

- ``preprocess``: read + crop + normalise the volume as prediction does (``autoseg.transforms.case``);
- ``predict``: the whole ``autoseg predict --workers 0 --no-tta --precision float32`` command (preprocessing, sliding
  window, probabilities, export in the input's geometry).

and prints each one's peak resident set size (``ru_maxrss`` of the child) and wall time. ``--compare-with FOLDER``
runs the same with another autoseg checkout first on ``PYTHONPATH`` (e.g. a worktree of an older commit made with
``git worktree add ../autoseg_old COMMIT``), so the two are measured in one run.

    python benchmarks/large_volume_memory.py [--slices 600] [--threads 2] [--compare-with ../autoseg_old]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (1.5, 0.8, 0.8)  # z, y, x in mm
PATCH = (64, 128, 128)


def write_volume(path: Path, slices: int, size: int) -> None:
    from autoseg.io.images import Geometry, write_image

    z, y, x = np.ogrid[:slices, :size, :size]
    body = ((y - size / 2) / (0.42 * size)) ** 2 + ((x - size / 2) / (0.38 * size)) ** 2 < 1
    organ = ((z - slices / 2) / (0.2 * slices)) ** 2 + ((y - size / 2.2) / (0.1 * size)) ** 2 \
        + ((x - size / 1.8) / (0.12 * size)) ** 2 < 1
    volume = np.full((slices, size, size), -1000, dtype=np.int16)
    volume[np.broadcast_to(body, volume.shape)] = 40
    volume[organ] = 120
    volume += np.random.default_rng(0).integers(-20, 21, size=volume.shape, dtype=np.int16)
    geometry = Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                        shape=volume.shape)
    write_image(volume, geometry, path)


def write_model_folder(folder: Path) -> None:
    import torch

    from autoseg.networks import build_network
    from autoseg.records.checkpoint import save_checkpoint
    from autoseg.records.plans import Configuration
    from autoseg.utils.files import write_json

    configuration = {
        "dimension": 3, "spacing": list(SPACING), "median_shape": [600, 512, 512], "patch_size": list(PATCH),
        "batch_size": 2,
        "network": {"architecture": "plain_unet", "features_per_stage": [4, 8, 16],
                    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                    "blocks_per_stage_encoder": [1, 1, 1], "convs_per_stage_decoder": [1, 1]},
        "normalization": [{"scheme": "zscore", "use_mask": False}],
        "resampling": {"anisotropic": False, "image_order": 3, "label_order": 1, "coarse_axis_order": 0},
        "batch_dice": False,
    }
    folder.mkdir(parents=True)
    write_json(folder / "dataset.json", {
        "root": str(folder), "name": "LargeCT", "channel_names": ["CT"],
        "labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz", "num_training": 0,
        "training_cases": [], "test_cases": [], "regions_class_order": None, "ignore_label": None,
    })
    write_json(folder / "plans.json", {
        "dataset_name": "LargeCT", "plans_name": "benchmark", "preset": "default", "gpu_memory_gb": 8,
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
    })
    torch.manual_seed(0)
    network = build_network(Configuration.from_json("3d_fullres", configuration), in_channels=1, out_channels=3)
    save_checkpoint(folder / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt", {
        "network": network.state_dict(), "configuration": configuration, "configuration_name": "3d_fullres",
    })


PREPROCESS_ONLY = """
import sys
from autoseg.records.plans import load_plans
from autoseg.transforms.case import preprocess_case
plans = load_plans(sys.argv[1])
data, _, _ = preprocess_case([sys.argv[2]], None, configuration=plans.configuration("3d_fullres"))
print(data.shape)
"""


def measure(command: list[str], python_path: str | None) -> dict:
    """Peak RSS (GB) and wall seconds of ``command`` run as a fresh child process."""
    environment = dict(os.environ)
    if python_path:
        environment["PYTHONPATH"] = python_path
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:  # ru_maxrss is the largest child so far: run the larger measurement first or use one each
        raise RuntimeError("measure each command in its own benchmark process (ru_maxrss only grows)")
    return {"peak_gb": peak_kib / 1024**2, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-with", default=None, help="another autoseg checkout to measure first")
    parser.add_argument("--only", choices=("preprocess", "predict"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--python-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:  # one measurement in this process (ru_maxrss of children only grows)
        folder = Path(args.folder)
        commands = {
            "preprocess": [sys.executable, "-c", PREPROCESS_ONLY, str(folder / "model" / "plans.json"),
                           str(folder / "input" / "ct_0000.nii.gz")],
            "predict": [sys.executable, "-m", "autoseg", "predict", "-i", str(folder / "input"), "-o",
                        str(folder / f"output_{abs(hash(args.python_path))}"), "-m", str(folder / "model"),
                        "--workers", "0", "--no-tta", "--precision", "float32", "--threads", str(args.threads)],
        }
        print(json.dumps(measure(commands[args.only], args.python_path)))
        return
    with tempfile.TemporaryDirectory(prefix="autoseg-large-") as temporary:
        folder = Path(temporary)
        (folder / "input").mkdir()
        write_volume(folder / "input" / "ct_0000.nii.gz", args.slices, args.size)
        write_model_folder(folder / "model")
        voxels = args.slices * args.size * args.size
        print(f"volume {args.slices}x{args.size}x{args.size} ({voxels / 1e6:.0f} M voxels, int16 on disk), 3 classes, "
              f"patch {PATCH}, {args.threads} thread(s)")
        print("| code | step | peak RSS (GB) | seconds |\n|---|---|---|---|")
        versions = ([("compared", args.compare_with)] if args.compare_with else []) + [("this", None)]
        for name, python_path in versions:
            for step in ("preprocess", "predict"):
                command = [sys.executable, __file__, "--only", step, "--folder", str(folder),
                           "--threads", str(args.threads)] + (["--python-path", python_path] if python_path else [])
                result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                print(f"| {name} | {step} | {result['peak_gb']:.2f} | {result['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
