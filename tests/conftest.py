"""Shared test fixtures: where the real shared datasets are, and small copies of them to break or convert."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from optional import require_dataset

from autoseg.utils.files import sha256_file

HIPPOCAMPUS_NAME = "Dataset004_Hippocampus"
HC18_NAME = "Dataset018_HC18"


@pytest.fixture(scope="session")
def hippocampus_root() -> Path:
    """The real MSD Hippocampus dataset (3D MRI, 200 cases). Read only: never write into it."""
    return require_dataset(HIPPOCAMPUS_NAME)


@pytest.fixture(scope="session")
def hc18_root() -> Path:
    """The real HC18 dataset (2D ultrasound as 1xHxW NIfTI, 300 cases). Read only: never write into it."""
    return require_dataset(HC18_NAME)


def _tree_hashes(folder: Path, *, every: int = 1) -> dict[str, str]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()][::every]
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


@pytest.fixture(scope="session")
def tree_hashes() -> Callable[..., dict[str, str]]:
    """``tree_hashes(folder, every=1)``: SHA-256 of every ``every``-th file under ``folder`` by relative path;
    equal dicts before and after an operation mean it left the files byte-identical."""
    return _tree_hashes


@pytest.fixture
def copy_cases(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``copy_cases(source_root, count)`` copies the first ``count`` training cases of a shared dataset
    into a fresh raw dataset folder under ``tmp_path`` (``numTraining`` adjusted) and returns its path."""

    def copy(source_root: Path, count: int, *, name: str | None = None) -> Path:
        destination = tmp_path / (name or source_root.name)
        (destination / "imagesTr").mkdir(parents=True)
        (destination / "labelsTr").mkdir()
        meta = json.loads((source_root / "dataset.json").read_text(encoding="utf-8"))
        ending = meta["file_ending"]
        labels = sorted((source_root / "labelsTr").glob(f"*{ending}"))[:count]
        for label in labels:
            identifier = label.name[: -len(ending)]
            shutil.copyfile(label, destination / "labelsTr" / label.name)
            for image in sorted((source_root / "imagesTr").glob(f"{identifier}_[0-9][0-9][0-9][0-9]{ending}")):
                shutil.copyfile(image, destination / "imagesTr" / image.name)
        meta["numTraining"] = len(labels)
        (destination / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return destination

    return copy
