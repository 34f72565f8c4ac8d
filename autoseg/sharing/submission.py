"""Challenge submission folders: one label map per test case named as the input case, a manifest, and a zip.

The manifest says exactly what produced the predictions: a hash of the model (plans, dataset description,
recipe, post-processing and every checkpoint used), configurations, folds, checkpoint, test-time mirroring,
post-processing, seeds and library versions. The zip is deterministic (fixed timestamps, sorted members).
"""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

from autoseg.sharing.manifest import library_versions
from autoseg.utils.files import atomic_path, sha256_file, write_json

SUBMISSION_MANIFEST = "submission_manifest.json"
ZIP_TIMESTAMP = (2020, 1, 1, 0, 0, 0)
MODEL_RECORDS = ("plans.json", "dataset.json", "inference.json", "postprocessing.json")


def model_files(model_folder: Path, checkpoint_paths: Sequence[Path]) -> list[Path]:
    """The files that decide what a model predicts: its JSON records and the checkpoints in use."""
    records = [model_folder / name for name in MODEL_RECORDS if (model_folder / name).is_file()]
    return records + sorted(Path(path) for path in checkpoint_paths)


def model_hash(model_folder: Path, checkpoint_paths: Sequence[Path]) -> str:
    """SHA-256 over (relative path, file SHA-256) of every file that decides the predictions."""
    digest = hashlib.sha256()
    for path in model_files(model_folder, checkpoint_paths):
        relative = path.resolve().relative_to(model_folder.resolve()).as_posix()
        digest.update(f"{relative}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def training_seeds(checkpoint_paths: Sequence[Path]) -> dict[str, dict]:
    """The seed and determinism flag each checkpoint was trained with (absent keys for foreign checkpoints)."""
    import torch

    seeds = {}
    for path in checkpoint_paths:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        settings = checkpoint.get("settings", {}) if isinstance(checkpoint, dict) else {}
        seeds[f"{Path(path).parent.parent.name}/{Path(path).parent.name}"] = {
            key: settings[key] for key in ("seed", "deterministic") if key in settings
        }
    return seeds


def write_submission(
    submission_folder: Path,
    *,
    model_folder: Path,
    checkpoint_paths: Sequence[Path],
    description: dict,
    predictions: Sequence[Path],
) -> Path:
    """Write the manifest into ``submission_folder`` and zip it beside the folder; returns the zip path.

    Only ``predictions`` (the label maps this submission wrote) go into the manifest and the zip: a file left in
    the folder by an earlier run is not part of this submission.
    """
    submission_folder = Path(submission_folder)
    predictions = sorted(Path(path) for path in predictions)
    for path in predictions:
        if path.parent.resolve() != submission_folder.resolve() or path.name == SUBMISSION_MANIFEST:
            raise ValueError(f"{path}: a submission's predictions must be files directly in {submission_folder}")
    manifest = {
        "format": "autoseg-submission",
        "format_version": 1,
        "name": submission_folder.name,
        "model_hash": model_hash(model_folder, checkpoint_paths),
        **description,
        "seeds": training_seeds(checkpoint_paths),
        "versions": library_versions(),
        "files": {path.name: sha256_file(path) for path in predictions},
    }
    write_json(submission_folder / SUBMISSION_MANIFEST, manifest)
    archive_path = submission_folder.with_name(submission_folder.name + ".zip")
    with atomic_path(archive_path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in [*predictions, submission_folder / SUBMISSION_MANIFEST]:
            info = zipfile.ZipInfo(f"{submission_folder.name}/{path.name}", date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, path.read_bytes())
    return archive_path


def read_submission_manifest(submission_folder: Path) -> dict:
    return json.loads((Path(submission_folder) / SUBMISSION_MANIFEST).read_text(encoding="utf-8"))
