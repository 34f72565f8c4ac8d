"""A cheap signature of a raw dataset's inputs: it changes whenever a file is added, removed, resized or touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

from autoseg.records.case_signatures import case_file_lines
from autoseg.records.dataset import RawDataset
from autoseg.utils.files import dumps_json


def inputs_signature(dataset: RawDataset, *, fingerprint_version: int) -> str:
    """SHA-256 over ``(relative path, size, mtime_ns)`` of every training file and over the dataset description.

    Reading headers or voxels would cost as much as the fingerprint itself; size plus modification time catches
    every edit a user makes in practice (a rewritten file always gets a new mtime). The description (labels,
    channel names, ignore label) is included because it changes what the fingerprint counts.
    """
    root = Path(dataset.root).resolve()
    digest = hashlib.sha256()
    description = {
        "fingerprint_version": fingerprint_version,
        "channel_names": dataset.channel_names,
        "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in dataset.labels.items()},
        "ignore_label": dataset.ignore_label,
    }
    digest.update(dumps_json(description).encode("utf-8"))
    for case in dataset.training_cases:
        digest.update(case_file_lines(case, root).encode("utf-8"))
    return digest.hexdigest()
