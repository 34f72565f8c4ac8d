"""Read a raw dataset folder in the nnU-Net v2 convention into a ``RawDataset`` record, listing every problem.

Layout::

    DATASET/dataset.json
    DATASET/imagesTr/CASE_0000.nii.gz   (one file per channel, 4-digit channel index)
    DATASET/labelsTr/CASE.nii.gz
    DATASET/imagesTs/CASE_0000.nii.gz   (optional)

``dataset.json`` holds ``channel_names``, ``labels`` (``background`` = 0, classes as ints, regions as lists of
ints, an optional ``ignore`` label), ``numTraining``, ``file_ending``, and optionally ``regions_class_order`` and a
``dataset`` key mapping each case to its files (paths relative to the dataset folder, or absolute).

Example (``hippocampus`` is the path of the real Dataset004_Hippocampus folder):
    >>> dataset = load_raw_dataset(hippocampus)
    >>> dataset.name, len(dataset.training_cases), dataset.channel_names
    ('Hippocampus', 200, ('MRI',))
    >>> dataset.labels
    {'background': 0, 'anterior': 1, 'posterior': 2}
    >>> case = dataset.training_cases[0]
    >>> case.identifier, [Path(path).name for path in case.images], Path(case.label).name
    ('hippocampus_001', ['hippocampus_001_0000.nii.gz'], 'hippocampus_001.nii.gz')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from autoseg.errors import DatasetError
from autoseg.io.images import IMAGE_ENDINGS, file_ending
from autoseg.records.dataset import Case, Problem, RawDataset, read_dataset_json

CHANNEL_FILE_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _parse_labels(raw: object, problems: list[Problem], json_path: str) -> tuple[dict, int | None]:
    labels: dict[str, int | tuple[int, ...]] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append(Problem("error", "'labels' must be a non-empty mapping of name to value", path=json_path))
        return labels, None
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            problems.append(
                Problem("error", f"label {name!r} must be an integer or a list of integers", path=json_path)
            )
            continue
        if isinstance(value, list):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                problems.append(
                    Problem("error", f"region {name!r} must be a non-empty list of integers", path=json_path)
                )
                continue
            labels[name] = tuple(value) if len(value) > 1 else value[0]
        else:
            labels[name] = value
    if labels.get("background") != 0:
        problems.append(Problem("error", "labels must declare 'background': 0", path=json_path))
    ignore = labels.get("ignore")
    if isinstance(ignore, tuple):
        problems.append(Problem("error", "the 'ignore' label must be a single integer", path=json_path))
        ignore = None
    # Region members count too: BraTS-style regions ([1, 2, 3], [2, 3], 3) use the values 0..3.
    integer_values = sorted(
        {
            member
            for name, v in labels.items()
            if name != "ignore"
            for member in (v if isinstance(v, tuple) else (v,))
        }
    )
    if integer_values and integer_values != list(range(len(integer_values))):
        problems.append(
            Problem("error", f"label values must be consecutive integers from 0, got {integer_values}", path=json_path)
        )
    if ignore is not None and integer_values and ignore <= max(integer_values):
        problems.append(
            Problem("error", f"the 'ignore' label ({ignore}) must be larger than every class value", path=json_path)
        )
    return labels, ignore


def _files_with_ending(folder: Path, ending: str, problems: list[Problem]) -> Iterator[Path]:
    """The visible files of ``folder`` in name order that end in ``ending``; any other file is reported."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.name.endswith(ending):
            yield entry
            continue
        found = file_ending(entry)
        reason = f"unexpected file ending (dataset.json says {ending!r})" if found else "unknown file ending"
        problems.append(Problem("error", reason, path=str(entry)))


def discover_cases(
    folder: Path, ending: str, num_channels: int, problems: list[Problem], with_labels: Path | None
) -> list[Case]:
    """Group ``CASE_XXXX.ending`` files into cases; report files that do not fit."""
    channels_by_case: dict[str, dict[int, str]] = {}
    for entry in _files_with_ending(folder, ending, problems):
        match = CHANNEL_FILE_PATTERN.match(entry.name[: -len(ending)])
        if not match:
            problems.append(
                Problem("error", "image file name must end in a 4-digit channel index, e.g. CASE_0000" + ending,
                        path=str(entry))
            )
            continue
        channel = int(match.group("channel"))
        channels_by_case.setdefault(match.group("case"), {})[channel] = str(entry)
    cases = []
    for identifier, channels in channels_by_case.items():
        missing = [c for c in range(num_channels) if c not in channels]
        extra = [c for c in channels if c >= num_channels]
        for channel in missing:
            problems.append(
                Problem("error", f"missing channel {channel:04d}", case=identifier,
                        path=str(folder / f"{identifier}_{channel:04d}{ending}"))
            )
        for channel in extra:
            problems.append(
                Problem("error", f"extra channel {channel:04d} (dataset.json declares {num_channels})",
                        case=identifier, path=channels[channel])
            )
        if missing:
            continue
        label = None
        if with_labels is not None:
            label_path = with_labels / f"{identifier}{ending}"
            if not label_path.is_file():
                problems.append(Problem("error", "label file is missing", case=identifier, path=str(label_path)))
                continue
            label = str(label_path)
        cases.append(Case(identifier, tuple(channels[c] for c in range(num_channels)), label))
    return cases


def _cases_from_mapping(root: Path, mapping: object, problems: list[Problem], json_path: str) -> list[Case]:
    if not isinstance(mapping, dict):
        problems.append(Problem("error", "'dataset' must map case identifiers to {'images': [...], 'label': ...}",
                                path=json_path))
        return []
    cases = []
    for identifier, entry in mapping.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            problems.append(Problem("error", "entry must have 'images' (list) and 'label'", case=identifier,
                                    path=json_path))
            continue
        paths = [str(p if os.path.isabs(p) else root / p) for p in [*entry["images"], entry["label"]]]
        missing = [p for p in paths if not Path(p).is_file()]
        for path in missing:
            problems.append(Problem("error", "file listed in dataset.json does not exist", case=identifier, path=path))
        if not missing:
            cases.append(Case(str(identifier), tuple(paths[:-1]), paths[-1]))
    return cases


def _read_dataset_json(root: Path) -> tuple[dict | None, list[Problem]]:
    """``dataset.json`` with its required keys, or None and the problems that make it unusable."""
    json_path = root / "dataset.json"
    if not root.is_dir():
        return None, [Problem("error", "dataset folder does not exist", path=str(root))]
    if not json_path.is_file():
        return None, [Problem("error", "dataset.json is missing", path=str(json_path))]
    try:
        meta = read_dataset_json(json_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, [Problem("error", f"dataset.json is not valid JSON ({error})", path=str(json_path))]
    if not isinstance(meta, dict):
        return None, [Problem("error", "dataset.json must hold a JSON object", path=str(json_path))]

    if "channel_names" not in meta and "modality" in meta:
        return None, [Problem("error", "this looks like a Medical Segmentation Decathlon dataset.json ('modality', "
                                       "'training'); convert it first with `autoseg convert-msd SRC DST`",
                              path=str(json_path))]
    problems = [
        Problem("error", f"dataset.json lacks the required key {key!r}", path=str(json_path))
        for key in ("channel_names", "labels", "file_ending")
        if key not in meta
    ]
    return (None, problems) if problems else (meta, [])


def _training_cases_from_folders(root: Path, ending: str, num_channels: int, problems: list[Problem]) -> list[Case]:
    """The cases of ``imagesTr``/``labelsTr``; also reports label files without a matching image."""
    images_folder = root / "imagesTr"
    labels_folder = root / "labelsTr"
    if not images_folder.is_dir():
        problems.append(Problem("error", "imagesTr folder is missing", path=str(images_folder)))
        return []
    if not labels_folder.is_dir():
        problems.append(Problem("error", "labelsTr folder is missing", path=str(labels_folder)))
        return []
    training = discover_cases(images_folder, ending, num_channels, problems, labels_folder)
    known = {case.identifier for case in training}
    image_ids = {
        m.group("case")
        for p in images_folder.iterdir()
        if p.name.endswith(ending) and (m := CHANNEL_FILE_PATTERN.match(p.name[: -len(ending)]))
    }
    for entry in _files_with_ending(labels_folder, ending, problems):
        identifier = entry.name[: -len(ending)]
        if identifier not in known and identifier not in image_ids:
            problems.append(Problem("error", "label file has no matching image", case=identifier, path=str(entry)))
    return training


def _checked_num_training(
    meta: dict, training: list[Case], problems: list[Problem], *, root: Path, json_path: str
) -> int:
    """``numTraining``, reported when missing or when it disagrees with the cases found (then the count found)."""
    num_training = meta.get("numTraining")
    if not isinstance(num_training, int) or isinstance(num_training, bool):
        problems.append(Problem("error", "dataset.json lacks an integer 'numTraining'", path=json_path))
        num_training = len(training)
    elif num_training != len(training) and not any(p.severity == "error" and p.case for p in problems):
        problems.append(Problem("error", f"numTraining is {num_training} but {len(training)} training cases were found",
                                path=json_path))
    if not training and not any(p.severity == "error" for p in problems):
        problems.append(Problem("error", "no training cases found", path=str(root / "imagesTr")))
    return num_training


def scan_raw_dataset(root: str | os.PathLike[str]) -> tuple[RawDataset | None, list[Problem]]:
    """Read the structure of a raw dataset folder without opening any image.

    Returns the description (None if ``dataset.json`` itself is unusable) and every structural problem found.
    """
    root = Path(root).resolve()
    meta, problems = _read_dataset_json(root)
    if meta is None:
        return None, problems
    json_path = str(root / "dataset.json")
    channel_raw = meta["channel_names"]
    try:
        channel_names = tuple(channel_raw[str(i)] for i in range(len(channel_raw)))
    except (KeyError, TypeError):
        return None, [Problem("error", "'channel_names' must map '0', '1', ... to names", path=json_path)]
    ending = meta["file_ending"]
    if ending not in IMAGE_ENDINGS:
        problems.append(Problem("error", f"file_ending {ending!r} is not supported ({', '.join(IMAGE_ENDINGS)})",
                                path=json_path))
    labels, ignore = _parse_labels(meta["labels"], problems, json_path)
    regions_order = meta.get("regions_class_order")
    has_regions = any(isinstance(v, tuple) for k, v in labels.items() if k != "background")
    if has_regions and not regions_order:
        problems.append(Problem("error", "labels declare regions, so dataset.json needs 'regions_class_order'",
                                path=json_path))

    if "dataset" in meta:
        training = _cases_from_mapping(root, meta["dataset"], problems, json_path)
    else:
        training = _training_cases_from_folders(root, ending, len(channel_names), problems)
    test_folder = root / "imagesTs"
    test_cases = (
        discover_cases(test_folder, ending, len(channel_names), problems, None) if test_folder.is_dir() else []
    )
    num_training = _checked_num_training(meta, training, problems, root=root, json_path=json_path)

    dataset = RawDataset(
        root=str(root),
        name=str(meta.get("name") or root.name),
        channel_names=channel_names,
        labels=labels,
        file_ending=ending,
        num_training=num_training,
        training_cases=tuple(sorted(training, key=lambda c: c.identifier)),
        test_cases=tuple(sorted(test_cases, key=lambda c: c.identifier)),
        regions_class_order=tuple(regions_order) if regions_order else None,
        ignore_label=ignore,
    )
    return dataset, problems


def load_raw_dataset(root: str | os.PathLike[str]) -> RawDataset:
    """Read a raw dataset folder; raise ``DatasetError`` naming every structural problem.

    This checks the folder layout and ``dataset.json`` only; ``autoseg.data.check.check_dataset`` also opens
    every image.
    """
    dataset, problems = scan_raw_dataset(root)
    errors = [p for p in problems if p.severity == "error"]
    if errors or dataset is None:
        listed = "\n".join(f"  {p}" for p in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DatasetError(f"{root}: the raw dataset has {len(errors)} problem(s):\n{listed}{more}")
    return dataset
