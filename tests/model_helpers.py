"""Builders for small model folders (plans, dataset description, randomly initialised checkpoints) in tests."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

from autoseg.data.raw_folder import load_raw_dataset
from autoseg.networks import build_network
from autoseg.records.checkpoint import save_checkpoint
from autoseg.records.plans import Configuration, Plans
from autoseg.utils.files import write_json

ZSCORE = [{"scheme": "zscore", "use_mask": False}]
ISOTROPIC_RESAMPLING = {"anisotropic": False, "image_order": 3, "label_order": 1, "coarse_axis_order": 0}


def tiny_configuration(*, dimension: int, spacing, patch_size, features=(4, 8)) -> dict:
    stages = len(features)
    return {
        "dimension": dimension,
        "spacing": list(spacing),
        "median_shape": list(patch_size) if dimension == 3 else [1, *patch_size],
        "patch_size": list(patch_size),
        "batch_size": 2,
        "network": {
            "architecture": "plain_unet",
            "features_per_stage": list(features),
            "kernel_sizes": [[3] * dimension] * stages,
            "strides": [[1] * dimension] + [[2] * dimension] * (stages - 1),
            "blocks_per_stage_encoder": [1] * stages,
            "convs_per_stage_decoder": [1] * (stages - 1),
        },
        "normalization": ZSCORE,
        "resampling": ISOTROPIC_RESAMPLING,
        "batch_dice": False,
    }


def as_configuration(data: dict, *, name: str = "test", transpose=(0, 1, 2)) -> Configuration:
    """The record of a configuration written as a dict (as in plans.json), with the plans' axis order."""
    return Configuration.from_json(name, data, transpose_forward=transpose)


def make_model_folder(
    folder: Path, dataset_root: Path, configurations: dict[str, dict], *, folds=(0,), transpose=(0, 1, 2),
    in_channels_extra: dict[str, int] | None = None,
) -> Path:
    """A WORK/<dataset> folder: plans.json, dataset.json and randomly initialised checkpoints per fold."""
    dataset = load_raw_dataset(dataset_root)
    folder.mkdir(parents=True)
    write_json(folder / "dataset.json", dataset.to_dict())
    backward = [int(i) for i in np.argsort(transpose)]
    write_json(folder / "plans.json", {
        "dataset_name": dataset.name, "plans_name": "tiny_test_plan", "preset": "default", "gpu_memory_gb": 8,
        "transpose_forward": list(transpose), "transpose_backward": backward, "configurations": configurations,
    })
    plans = Plans.from_json(json.loads((folder / "plans.json").read_text()))
    for name in configurations:
        # Checkpoints record the resolved configuration they were trained with.
        configuration = plans.configuration(name)
        extra = (in_channels_extra or {}).get(name, 0)
        for fold in folds:
            # zlib.crc32, not hash(): str hashes change per process, which made random weights (and tests) vary.
            torch.manual_seed(zlib.crc32(f"{name}/{fold}".encode()) % 1000)
            network = build_network(configuration, in_channels=dataset.num_channels + extra,
                                    out_channels=dataset.num_output_channels)
            save_checkpoint(folder / "models" / name / f"fold_{fold}" / "checkpoint_final.pt",
                            {"network": network.state_dict(), "configuration": configuration.to_json(),
                             "configuration_name": name})
    return folder


def make_cascade_model_folder(folder: Path, dataset_root: Path, *, folds=(0,)) -> Path:
    """A model folder with tiny 3d_fullres, 3d_lowres and 3d_cascade_fullres stages (the cascade reads the image and
    the low-resolution segmentation as one-hot channels of the dataset's two foreground labels)."""
    fullres = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    lowres = {"inherits_from": "3d_fullres", "spacing": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16]}
    cascade = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return make_model_folder(
        folder, dataset_root, {"3d_fullres": fullres, "3d_lowres": lowres, "3d_cascade_fullres": cascade},
        folds=folds, in_channels_extra={"3d_cascade_fullres": 2},
    )


def link_cases(dataset_root: Path, destination: Path, identifiers: list[str]) -> Path:
    """An input folder of symbolic links to real shared images (nothing is copied)."""
    destination.mkdir(parents=True)
    meta = json.loads((dataset_root / "dataset.json").read_text())
    ending = meta["file_ending"]
    for identifier in identifiers:
        for channel in range(len(meta["channel_names"])):
            name = f"{identifier}_{channel:04d}{ending}"
            (destination / name).symlink_to(dataset_root / "imagesTr" / name)
    return destination


def first_identifiers(dataset_root: Path, count: int) -> list[str]:
    return [case.identifier for case in load_raw_dataset(dataset_root).training_cases[:count]]
