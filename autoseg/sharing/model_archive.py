"""Export a trained model folder to a zip archive and import it back, refusing anything unsafe.

An archive holds the JSON records (dataset description, fingerprint, plans, splits, post-processing, inference
recipe), the chosen weights-only checkpoints, and ``manifest.json`` with versions and the SHA-256 of every file.
Import verifies every hash and refuses archives with absolute paths, ``..`` components, symbolic links, pickles or
checkpoints that do not load with ``torch.load(weights_only=True)``; nothing is ever written outside the destination.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus`` with two folds of ``3d_fullres``):
    >>> manifest = export_model(model_folder, "hippocampus.zip")
    >>> for name in manifest["files"]:
    ...     print(name)
    dataset.json
    inference.json
    models/3d_fullres/fold_0/checkpoint_final.pt
    models/3d_fullres/fold_1/checkpoint_final.pt
    plans.json
    postprocessing.json
    >>> imported = import_model("hippocampus.zip", "colleague/Dataset004_Hippocampus")
    >>> imported["files"] == manifest["files"]  # every file arrived with its SHA-256 verified
    True
    >>> from autoseg.inference import ModelSource, PredictionOptions, load_predictor
    >>> load_predictor(ModelSource.checkpoints("colleague/Dataset004_Hippocampus"),
    ...                PredictionOptions(device="cpu")).trained_model.folds
    ('0', '1')
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from autoseg.errors import UserError
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import (
    DATASET_FILE,
    FINGERPRINT_FILE,
    INFERENCE_RECIPE_FILE,
    PLANS_FILE,
    POSTPROCESSING_FILE,
    SPLITS_FILE,
    WorkFolder,
)
from autoseg.sharing.manifest import MANIFEST_NAME, build_manifest
from autoseg.sharing.submission import training_seeds
from autoseg.utils.files import atomic_path, sha256_file

RECORD_FILES = (DATASET_FILE, FINGERPRINT_FILE, PLANS_FILE, SPLITS_FILE, POSTPROCESSING_FILE, INFERENCE_RECIPE_FILE)
ALLOWED_SUFFIXES = (".json", ".pt")
# A fixed timestamp makes archives of the same files byte-identical.
ZIP_TIMESTAMP = (2020, 1, 1, 0, 0, 0)


class UnsafeArchiveError(UserError):
    """A model archive is malformed or tries something dangerous."""


def _configurations_needed(model_folder: Path, configuration: str) -> list[str]:
    """``configuration`` and, for a cascade, every earlier stage it runs first (each predicts with the same folds)."""
    plans = load_plans(WorkFolder.at(model_folder).plans)
    needed = [configuration]
    while (previous := plans.configuration(needed[-1]).previous_stage) and previous not in needed:
        needed.append(previous)
    return needed


def _chosen_checkpoints(model_folder: Path, checkpoint_name: str) -> list[str]:
    """Checkpoints named by the inference recipe (with the earlier stages of a cascade), else ``checkpoint_name``
    of every trained fold."""
    work_folder = WorkFolder.at(model_folder)
    recipe_path = work_folder.inference_recipe
    chosen: list[Path] = []
    if (recipe := InferenceRecipe.read(recipe_path)) is not None:
        for model in recipe.models:
            for configuration in _configurations_needed(model_folder, model.configuration):
                folds = model.folds or ()
                chosen.extend(work_folder.checkpoint(configuration, fold, checkpoint_name) for fold in folds)
        missing = [str(path) for path in chosen if not path.is_file()]
        if missing:
            raise UserError(f"{recipe_path}: names checkpoints that do not exist, e.g. {missing[0]}.")
    else:
        chosen = work_folder.trained_folds("*", checkpoint_name)
        chosen = [folder / f"checkpoint_{checkpoint_name}.pt" for folder in chosen]
    if not chosen:
        expected = work_folder.checkpoint("CONFIG", "K", checkpoint_name).relative_to(work_folder.root).as_posix()
        raise UserError(f"{model_folder}: no trained checkpoint ({expected}) to export.")
    return sorted({str(path.relative_to(model_folder).as_posix()) for path in chosen})


def export_model(
    model_folder: str | os.PathLike[str],
    archive_path: str | os.PathLike[str],
    *,
    checkpoint_name: str = "final",
    extra_manifest: dict | None = None,
) -> dict:
    """Write ``archive_path`` (zip) from a working folder of one dataset; return the manifest."""
    model_folder = Path(model_folder).resolve()
    if not WorkFolder(model_folder).plans.is_file():
        raise UserError(f"{model_folder}: not a model folder (no plans.json); pass WORK/<dataset>.")
    members = [name for name in RECORD_FILES if (model_folder / name).is_file()]
    checkpoints = _chosen_checkpoints(model_folder, checkpoint_name)
    members += checkpoints
    extra = {"seeds": training_seeds([model_folder / path for path in checkpoints]), **(extra_manifest or {})}
    manifest = build_manifest(model_folder, members, extra=extra)
    with atomic_path(archive_path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(members):
            info = zipfile.ZipInfo(member, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, (model_folder / member).read_bytes())
        info = zipfile.ZipInfo(MANIFEST_NAME, date_time=ZIP_TIMESTAMP)
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        archive.writestr(info, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _validate_member_name(name: str, archive_path: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise UnsafeArchiveError(f"{archive_path}: refused, member {name!r} has an absolute path.")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchiveError(f"{archive_path}: refused, member {name!r} would escape the destination folder.")
    return path


def _validate_member(info: zipfile.ZipInfo, archive_path: Path) -> None:
    _validate_member_name(info.filename, archive_path)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{archive_path}: refused, member {info.filename!r} is a symbolic link.")
    if info.is_dir():
        return
    if not info.filename.endswith(ALLOWED_SUFFIXES):
        kind = "a pickle" if info.filename.endswith((".pkl", ".pickle")) else "not a JSON file or checkpoint"
        raise UnsafeArchiveError(f"{archive_path}: refused, member {info.filename!r} is {kind}.")


def _verify_checkpoint(path: Path, name: str, archive_path: Path) -> None:
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeArchiveError(
            f"{archive_path}: refused, checkpoint {name!r} holds pickled objects beyond plain tensors ({reason})."
        ) from None


def import_model(archive_path: str | os.PathLike[str], destination: str | os.PathLike[str]) -> dict:
    """Verify ``archive_path`` and unpack it into ``destination`` (which must not exist or be empty).

    Everything is extracted into a temporary folder beside ``destination`` and checked (names, types, hashes,
    weights-only checkpoints) before it is moved into place, so a refused archive leaves nothing behind.
    """
    archive_path = Path(archive_path)
    destination = Path(destination).resolve()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise UserError(f"{destination}: destination exists and is not empty; choose a new folder.")
    if not zipfile.is_zipfile(archive_path):
        raise UnsafeArchiveError(f"{archive_path}: not a zip archive.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.import.", dir=destination.parent))
    try:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            for info in infos:
                _validate_member(info, archive_path)
            names = {info.filename for info in infos if not info.is_dir()}
            if MANIFEST_NAME not in names:
                raise UnsafeArchiveError(f"{archive_path}: refused, it has no {MANIFEST_NAME}.")
            manifest = json.loads(archive.read(MANIFEST_NAME).decode("utf-8"))
            listed = manifest.get("files")
            if not isinstance(listed, dict):
                raise UnsafeArchiveError(f"{archive_path}: refused, {MANIFEST_NAME} lists no files.")
            for name in listed:
                _validate_member_name(name, archive_path)
            unlisted = sorted(names - set(listed) - {MANIFEST_NAME})
            if unlisted:
                raise UnsafeArchiveError(f"{archive_path}: refused, member {unlisted[0]!r} is not in the manifest.")
            for name, expected in listed.items():
                if name not in names:
                    raise UnsafeArchiveError(f"{archive_path}: refused, manifest file {name!r} is missing.")
                target = staging.joinpath(*PurePosixPath(name).parts)
                if staging.resolve() not in target.resolve().parents:
                    raise UnsafeArchiveError(f"{archive_path}: refused, member {name!r} escapes the destination.")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                if sha256_file(target) != expected:
                    raise UnsafeArchiveError(
                        f"{archive_path}: refused, {name!r} does not match its SHA-256 in the manifest "
                        "(corrupted or tampered)."
                    )
                if name.endswith(".pt"):
                    _verify_checkpoint(target, name, archive_path)
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if destination.exists():
            destination.rmdir()
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
