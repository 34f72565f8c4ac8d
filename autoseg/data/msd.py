"""Convert a Medical Segmentation Decathlon task folder into the raw dataset convention.

An MSD task stores every modality of a case in one 4D NIfTI (``imagesTr/CASE.nii.gz``, last axis = modality)
and describes itself with ``modality``, ``labels`` (``{"0": "background", ...}``), ``training`` (a list of
``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``) and ``test`` (a list of paths). The
raw convention wants one 3D file per channel (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...), labels
under the case name, and ``channel_names``/``labels``/``numTraining``/``file_ending``.

Each 3D channel gets exactly the geometry of the 4D file's first three axes (spacing, origin and the upper-left
3x3 block of its direction). Single-modality (3D) images and the label files are copied byte for byte. The
conversion writes into a hidden sibling folder and renames it to the destination at the end, so an interrupted
conversion never leaves a half-converted dataset that looks complete.

Example (``msd_task`` is a Task04_Hippocampus folder, as downloaded from the Decathlon, holding three cases):
    >>> destination = convert_msd(msd_task, "Dataset004_Hippocampus", workers=1, progress=False)
    >>> sorted(path.name for path in (destination / "imagesTr").iterdir())
    ['hippocampus_001_0000.nii.gz', 'hippocampus_004_0000.nii.gz', 'hippocampus_006_0000.nii.gz']
    >>> meta = json.loads((destination / "dataset.json").read_text())
    >>> meta["channel_names"], meta["labels"], meta["numTraining"]
    ({'0': 'MRI'}, {'background': 0, 'Anterior': 1, 'Posterior': 2}, 3)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.errors import DatasetError, UserError
from autoseg.io.images import Geometry, write_image
from autoseg.records.dataset import read_dataset_json
from autoseg.utils.files import write_json
from autoseg.utils.parallel import parallel_map

MSD_FILE_ENDING = ".nii.gz"


def _identifier(relative_path: str, json_path: Path) -> str:
    name = Path(relative_path).name
    if not name.endswith(MSD_FILE_ENDING):
        raise DatasetError(f"{json_path}: {relative_path!r} is not a {MSD_FILE_ENDING} file.")
    return name[: -len(MSD_FILE_ENDING)]


def _channel_geometry(image: sitk.Image) -> Geometry:
    """Geometry of one 3D channel of a 4D image: the first three axes' spacing, origin and direction block."""
    spacing = image.GetSpacing()[:3]
    size = image.GetSize()[:3]
    direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
    return Geometry(
        spacing=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
        origin=tuple(float(v) for v in image.GetOrigin()[:3]),
        direction=tuple(float(v) for v in direction.ravel()),
        shape=(int(size[2]), int(size[1]), int(size[0])),
    )


def _copy_file(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise DatasetError(f"{source}: file listed in the MSD dataset.json does not exist.")
    shutil.copyfile(source, destination)


def split_channels(task: tuple[str, str, str, int]) -> str:
    """Write the channels of one MSD image as ``CASE_XXXX.nii.gz`` files; return the case identifier.

    ``task`` is ``(source image, destination folder, case identifier, number of modalities)``.
    """
    source_text, folder_text, identifier, num_modalities = task
    source, folder = Path(source_text), Path(folder_text)
    if not source.is_file():
        raise DatasetError(f"{source}: file listed in the MSD dataset.json does not exist.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(f"{source}: cannot be read (truncated or corrupt file?).") from None
    dimension = reader.GetDimension()
    if dimension == 3:
        if num_modalities != 1:
            raise DatasetError(f"{source}: is 3D but dataset.json declares {num_modalities} modalities.")
        _copy_file(source, folder / f"{identifier}_0000{MSD_FILE_ENDING}")
        return identifier
    if dimension != 4 or reader.GetSize()[3] != num_modalities:
        found = f"{reader.GetSize()[3]} volumes" if dimension == 4 else f"{dimension}D"
        raise DatasetError(f"{source}: holds {found} but dataset.json declares {num_modalities} modalities.")
    try:
        image = sitk.ReadImage(str(source))
    except RuntimeError:
        raise DatasetError(f"{source}: cannot be read (truncated or corrupt file?).") from None
    geometry = _channel_geometry(image)
    volumes = sitk.GetArrayFromImage(image)  # (modality, z, y, x)
    for channel in range(num_modalities):
        write_image(volumes[channel], geometry, folder / f"{identifier}_{channel:04d}{MSD_FILE_ENDING}")
    return identifier


def _read_msd_json(source: Path) -> dict:
    json_path = source / "dataset.json"
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: the MSD task folder has no dataset.json.")
    try:
        meta = read_dataset_json(json_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_path}: is not valid JSON ({error}).") from None
    missing = [key for key in ("modality", "labels", "training") if key not in (meta if isinstance(meta, dict) else {})]
    if missing:
        raise DatasetError(f"{json_path}: is not an MSD dataset.json (it lacks {', '.join(map(repr, missing))}).")
    return meta


def _prepare_destination(destination: Path) -> None:
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise UserError(f"{destination}: the destination exists and is not empty; choose a new folder.")


def _channel_names_and_labels(meta: dict, json_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``channel_names`` and ``labels`` of the raw convention, from the MSD ``modality`` and ``labels``."""
    modalities = meta["modality"]
    try:
        channel_names = {str(i): str(modalities[str(i)]) for i in range(len(modalities))}
        labels = {str(name): int(value) for value, name in sorted(meta["labels"].items(), key=lambda i: int(i[0]))}
    except (KeyError, ValueError, AttributeError):
        raise DatasetError(f"{json_path}: 'modality' and 'labels' must map '0', '1', ... to names.") from None
    if "background" not in labels and labels:
        # MSD names class 0 differently in some tasks; the raw convention requires the name "background".
        first = next(iter(labels))
        labels = {"background" if name == first else name: value for name, value in labels.items()}
    return channel_names, labels


def _copy_labels_and_list_images(
    meta: dict, source: Path, staging: Path, *, num_modalities: int
) -> list[tuple[str, str, str, int]]:
    """Copy every training label into ``staging`` and return the ``split_channels`` task of every image."""
    json_path = source / "dataset.json"
    for folder in ("imagesTr", "labelsTr"):
        (staging / folder).mkdir()
    tasks = []
    for entry in meta["training"]:
        identifier = _identifier(entry["image"], json_path)
        _copy_file(source / entry["label"], staging / "labelsTr" / f"{identifier}{MSD_FILE_ENDING}")
        tasks.append((str(source / entry["image"]), str(staging / "imagesTr"), identifier, num_modalities))
    test_images = meta.get("test") or []
    if test_images:
        (staging / "imagesTs").mkdir()
    for relative in test_images:
        relative = relative["image"] if isinstance(relative, dict) else relative
        identifier = _identifier(relative, json_path)
        tasks.append((str(source / relative), str(staging / "imagesTs"), identifier, num_modalities))
    return tasks


def convert_msd(
    source: str | Path, destination: str | Path, *, workers: int = 2, progress: bool = True
) -> Path:
    """Convert the MSD task folder ``source`` into a raw dataset at ``destination`` and return its path.

    Raises:
        UserError: ``destination`` exists and is not empty (nothing is overwritten).
        DatasetError: ``source`` is not a readable MSD task (the message names the bad file).
    """
    source, destination = Path(source).resolve(), Path(destination).resolve()
    _prepare_destination(destination)
    meta = _read_msd_json(source)
    channel_names, labels = _channel_names_and_labels(meta, source / "dataset.json")

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial", dir=destination.parent))
    try:
        tasks = _copy_labels_and_list_images(meta, source, staging, num_modalities=len(channel_names))
        for _ in parallel_map(split_channels, tasks, workers=workers, progress=progress, description="converting"):
            pass
        raw_meta = {
            key: meta[key] for key in ("name", "description", "reference", "licence", "release") if key in meta
        }
        raw_meta.update(
            channel_names=channel_names,
            labels=labels,
            numTraining=len(meta["training"]),
            file_ending=MSD_FILE_ENDING,
        )
        write_json(staging / "dataset.json", raw_meta)
        if destination.exists():
            destination.rmdir()  # empty, checked above
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
