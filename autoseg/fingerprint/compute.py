"""Compute (or reuse) ``fingerprint.json``: parallel over cases, summarised into per-dataset statistics."""

from __future__ import annotations

import numpy as np

from autoseg import __version__
from autoseg.errors import DatasetError
from autoseg.fingerprint.case_fingerprint import CaseFingerprint, CaseRequest, fingerprint_case_in_worker
from autoseg.fingerprint.inputs_signature import inputs_signature
from autoseg.fingerprint.intensity_statistics import samples_per_case, summarise_intensities
from autoseg.records.case_signatures import case_signatures
from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import FINGERPRINT_VERSION, Fingerprint, cached_fingerprint
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.parallel import parallel_map


def _run_cases(requests: list[CaseRequest], workers: int, progress: bool) -> list[CaseFingerprint]:
    """Fingerprint every case, in order, with a progress bar; ``workers`` processes when there is enough work."""
    return list(
        parallel_map(fingerprint_case_in_worker, requests, workers=workers, description="fingerprint",
                     minimum_items_for_pool=4, progress=progress)
    )


def summarise_cases(
    dataset: RawDataset, cases: list[CaseFingerprint], *, signature: str
) -> Fingerprint:
    """Dataset-level fingerprint: per-case records, per-channel foreground statistics, per-class presence, medians."""
    spacings = np.array([case.spacing for case in cases], dtype=np.float64)
    shapes_after_crop = np.array([case.shape_after_crop for case in cases], dtype=np.float64)
    foreground_intensities = {}
    for channel in range(dataset.num_channels):
        samples = np.concatenate([case.foreground_samples[channel] for case in cases])
        foreground_intensities[str(channel)] = summarise_intensities(samples)
    classes = {}
    for value in dataset.foreground_labels:
        counts = [case.class_voxels.get(str(value), 0) for case in cases]
        classes[str(value)] = {"total_voxels": int(sum(counts)), "cases_present": int(sum(c > 0 for c in counts))}
    return Fingerprint.from_json({
        "autoseg_version": __version__,
        "fingerprint_version": FINGERPRINT_VERSION,
        "inputs_signature": signature,
        "dataset_name": dataset.name,
        "is_2d": bool(all(case.shape[0] == 1 for case in cases)),
        "channel_names": list(dataset.channel_names),
        "num_cases": len(cases),
        "cases": {case.identifier: case.record() for case in cases},
        "case_signatures": case_signatures(dataset),
        "foreground_intensities": foreground_intensities,
        "classes": classes,
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "median_shape_after_crop": [float(v) for v in np.median(shapes_after_crop, axis=0)],
        "median_relative_size_after_crop": float(np.median([case.relative_size_after_crop for case in cases])),
    })


def compute_fingerprint(
    dataset: RawDataset,
    work_folder: WorkFolder,
    *,
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
) -> Fingerprint:
    """Fingerprint ``dataset`` into the working folder's ``fingerprint.json`` and return it.

    An existing file is reused when its ``inputs_signature`` (paths, sizes and modification times of every
    training file, plus the label/channel description) still matches, so re-planning is instant; pass
    ``force=True`` to recompute anyway.

    Args:
        dataset: the raw dataset (every training case must have a label).
        work_folder: the dataset's working folder.
        workers: processes reading cases in parallel.
        force: ignore a cached fingerprint.
    """
    path = work_folder.fingerprint
    signature = inputs_signature(dataset, fingerprint_version=FINGERPRINT_VERSION)
    if not force and (cached := cached_fingerprint(path, signature)) is not None:
        return cached
    unlabelled = [case.identifier for case in dataset.training_cases if not case.label]
    if unlabelled:
        raise DatasetError(f"{dataset.root}: training case {unlabelled[0]} has no label file.")
    per_case = samples_per_case(len(dataset.training_cases))
    requests = [
        CaseRequest(case.identifier, tuple(case.images), case.label, dataset.ignore_label, per_case)
        for case in dataset.training_cases
    ]
    cases = _run_cases(requests, workers, progress)
    fingerprint = summarise_cases(dataset, cases, signature=signature)
    fingerprint.write(path)
    return fingerprint
