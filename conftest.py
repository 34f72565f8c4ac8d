"""Doctest fixtures: the names that the `>>>` examples in autoseg/ and docs/*.md use, built once from real cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from _pytest.doctest import DoctestItem  # pytest exports no public name for a doctest item

REPOSITORY = Path(__file__).resolve().parent
# tests/ is not a package; its conftest puts the folder on sys.path the same way, so both share its modules.
if str(REPOSITORY / "tests") not in sys.path:
    sys.path.insert(0, str(REPOSITORY / "tests"))
from optional import require_dataset  # noqa: E402  (found through the sys.path entry above)

# Three real cases keep every example on real data while the whole doctest run stays within seconds.
EXAMPLE_CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_006")
# A small block of false foreground far from the hippocampus, so post-processing examples have something to remove.
SPURIOUS_BLOCK = (slice(0, 2), slice(0, 2), slice(0, 2))


def _link_case_files(source_root: Path, destination: Path, identifiers: tuple[str, ...]) -> Path:
    """A raw dataset folder of symbolic links to the shared files: real data, nothing copied (examples only read)."""
    meta = json.loads((source_root / "dataset.json").read_text(encoding="utf-8"))
    (destination / "imagesTr").mkdir(parents=True)
    (destination / "labelsTr").mkdir()
    for identifier in identifiers:
        (destination / "imagesTr" / f"{identifier}_0000.nii.gz").symlink_to(
            source_root / "imagesTr" / f"{identifier}_0000.nii.gz"
        )
        label = f"{identifier}.nii.gz"
        (destination / "labelsTr" / label).symlink_to(source_root / "labelsTr" / label)
    meta["numTraining"] = len(identifiers)
    (destination / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return destination


def _msd_task(source_root: Path, destination: Path, identifiers: tuple[str, ...]) -> Path:
    """A Medical Segmentation Decathlon task folder (``Task04_Hippocampus`` layout) holding a few real cases."""
    (destination / "imagesTr").mkdir(parents=True)
    (destination / "labelsTr").mkdir()
    for identifier in identifiers:
        (destination / "imagesTr" / f"{identifier}.nii.gz").symlink_to(
            source_root / "imagesTr" / f"{identifier}_0000.nii.gz"
        )
        label = f"{identifier}.nii.gz"
        (destination / "labelsTr" / label).symlink_to(source_root / "labelsTr" / label)
    meta = {
        "name": "Hippocampus",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [
            {"image": f"./imagesTr/{identifier}.nii.gz", "label": f"./labelsTr/{identifier}.nii.gz"}
            for identifier in identifiers
        ],
        "test": [],
    }
    (destination / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return destination


def _predictions_with_a_spurious_block(labels_folder: Path, destination: Path) -> Path:
    """The reference label maps plus a false class-1 block in a corner: imperfect, but in a known way."""
    from autoseg.io.images import read_image, write_image

    destination.mkdir(parents=True)
    for label_path in sorted(labels_folder.glob("*.nii.gz")):
        label = read_image(label_path)
        array = label.array.copy()
        array[SPURIOUS_BLOCK] = 1
        write_image(array, label.geometry, destination / label_path.name)
    return destination


@pytest.fixture(scope="session")
def doctest_resources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything the examples refer to by name, built once per session from three real Hippocampus cases.

    The model is randomly initialised (training, even a tiny one, would cost minutes); examples therefore show
    shapes, geometry and plan fields of its predictions, never their quality.
    """
    hippocampus = require_dataset("Dataset004_Hippocampus")
    import numpy as np
    import torch
    from model_helpers import make_model_folder, tiny_configuration

    from autoseg.data.raw_folder import load_raw_dataset
    from autoseg.io.images import read_image
    from autoseg.preprocessing.preprocess_dataset import preprocess_dataset
    from autoseg.records.plans import load_plans
    from autoseg.records.work_folder import WorkFolder
    from autoseg.utils.files import read_json, write_json

    root = tmp_path_factory.mktemp("doctest_resources")
    dataset_folder = _link_case_files(hippocampus, root / "raw" / "Dataset004_Hippocampus", EXAMPLE_CASES)
    model_folder = make_model_folder(
        root / "autoseg_work" / "Dataset004_Hippocampus",
        dataset_folder,
        {"3d_fullres": tiny_configuration(
            dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(40, 56, 40), features=(4, 8, 16)
        )},
        folds=(0, 1),
    )
    # What model selection would have written: the recipe `autoseg predict` follows, and its post-processing.
    write_json(model_folder / "inference.json", {
        "models": [{"configuration": "3d_fullres", "folds": [0, 1]}], "postprocessing": "postprocessing.json",
    })
    write_json(model_folder / "postprocessing.json",
               {"keep_largest_foreground": True, "keep_largest_per_class": [], "connectivity": "full"})
    plans = load_plans(model_folder / "plans.json")
    preprocess_dataset(
        load_raw_dataset(dataset_folder), plans=plans, work_folder=WorkFolder(model_folder), workers=0,
        show_progress=False,
    )
    image_path = dataset_folder / "imagesTr" / f"{EXAMPLE_CASES[0]}_0000.nii.gz"
    return {
        "np": np,
        "torch": torch,
        "Path": Path,
        "hippocampus": hippocampus,
        "dataset_folder": dataset_folder,
        "model_folder": model_folder,
        "plans": plans,
        "configuration": plans.configuration("3d_fullres"),
        "plans_json": read_json(model_folder / "plans.json"),
        "preprocessed_folder": model_folder / "preprocessed" / "3d_fullres",
        "image_path": image_path,
        "label_path": dataset_folder / "labelsTr" / f"{EXAMPLE_CASES[0]}.nii.gz",
        "image": read_image(image_path).array.astype(np.float32),
        "reference_folder": dataset_folder / "labelsTr",
        "prediction_folder": _predictions_with_a_spurious_block(dataset_folder / "labelsTr", root / "predictions"),
        "msd_task": _msd_task(hippocampus, root / "Task04_Hippocampus", EXAMPLE_CASES),
    }


@pytest.fixture(autouse=True)
def _doctest_namespace_and_working_folder(request: pytest.FixtureRequest) -> None:
    """For doctests only: fill ``doctest_namespace`` and run in an empty temporary folder, so that files an example
    writes ("plans.json", "out/a.nii.gz") never land in the repository. Other tests get nothing from here."""
    if not isinstance(request.node, DoctestItem):
        return
    request.getfixturevalue("doctest_namespace").update(request.getfixturevalue("doctest_resources"))
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per group of skipped tests: how many, and the reason (what is missing and how to get it)."""
    groups: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        groups[reason] = groups.get(reason, 0) + 1
    if groups:
        terminalreporter.section("skipped, by what is missing")
        for reason, count in sorted(groups.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"SKIPPED {count} test(s): {reason}")
