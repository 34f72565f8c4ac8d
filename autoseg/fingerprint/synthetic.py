"""Fingerprints of imagined datasets: plan "what if my data looked like this" without writing a single image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoseg import __version__
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.fingerprint import FINGERPRINT_VERSION, Fingerprint


def synthetic_fingerprint(
    *,
    name: str,
    spacing: Sequence[float],
    shape: Sequence[int],
    num_cases: int = 20,
    channel_names: Sequence[str] = ("MRI",),
    num_classes: int = 1,
    relative_variation: float = 0.1,
    seed: int = 0,
) -> tuple[Fingerprint, RawDataset]:
    """A fingerprint whose cases scatter around ``spacing`` and ``shape`` by ``relative_variation``, and a matching
    ``RawDataset`` (paths are placeholders; nothing is read). Deterministic for a given ``seed``."""
    generator = np.random.default_rng(seed)
    cases = {}
    for index in range(num_cases):
        factors = 1.0 + relative_variation * (generator.random(len(shape)) - 0.5) * 2
        case_shape = [max(1, round(s * f)) if s > 1 else 1 for s, f in zip(shape, factors, strict=True)]
        case_spacing = [float(round(sp * (1.0 + relative_variation * (generator.random() - 0.5)), 6)) for sp in spacing]
        cases[f"case_{index:03d}"] = {
            "spacing": case_spacing,
            "shape": case_shape,
            "shape_after_crop": case_shape,
            "relative_size_after_crop": 1.0,
            "class_voxels": {str(c): 1000 for c in range(1, num_classes + 1)},
        }
    statistics = {"mean": 100.0, "std": 20.0, "median": 100.0, "min": 0.0, "max": 300.0,
                  "percentile_00_5": 40.0, "percentile_99_5": 160.0, "num_samples": 1000}
    spacings = np.array([c["spacing"] for c in cases.values()])
    shapes = np.array([c["shape_after_crop"] for c in cases.values()])
    fingerprint = {
        "autoseg_version": __version__,
        "fingerprint_version": FINGERPRINT_VERSION,
        "inputs_signature": f"synthetic:{name}:{seed}",
        "dataset_name": name,
        "is_2d": bool(all(c["shape"][0] == 1 for c in cases.values())),
        "channel_names": list(channel_names),
        "num_cases": num_cases,
        "cases": cases,
        "foreground_intensities": {str(i): dict(statistics) for i in range(len(channel_names))},
        "classes": {str(c): {"total_voxels": 1000 * num_cases, "cases_present": num_cases}
                    for c in range(1, num_classes + 1)},
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "median_shape_after_crop": [float(v) for v in np.median(shapes, axis=0)],
        "median_relative_size_after_crop": 1.0,
    }
    dataset = RawDataset(
        root=f"/synthetic/{name}",
        name=name,
        channel_names=tuple(channel_names),
        labels={"background": 0, **{f"class_{c}": c for c in range(1, num_classes + 1)}},
        file_ending=".nii.gz",
        num_training=num_cases,
        training_cases=tuple(
            Case(identifier, tuple(f"/synthetic/{name}/{identifier}_{i:04d}.nii.gz" for i in range(len(channel_names))),
                 f"/synthetic/{name}/{identifier}.nii.gz")
            for identifier in cases
        ),
    )
    return Fingerprint.from_json(fingerprint), dataset
