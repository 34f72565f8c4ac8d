"""The manifest of a shared model: library versions, seeds and a SHA-256 hash of every file."""

from __future__ import annotations

import platform
from pathlib import Path

from autoseg import __version__
from autoseg.utils.files import sha256_file

MANIFEST_NAME = "manifest.json"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a model predicts."""
    import numpy
    import SimpleITK
    import torch

    return {
        "autoseg": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version.VersionString(),
        "python": platform.python_version(),
    }


def build_manifest(root: Path, relative_paths: list[str], *, extra: dict | None = None) -> dict:
    """A manifest for the files ``relative_paths`` below ``root`` (hashes in path order, so it is deterministic)."""
    files = {path: sha256_file(root / path) for path in sorted(relative_paths)}
    manifest = {"format": "autoseg-model", "format_version": 1, "versions": library_versions(), "files": files}
    if extra:
        manifest.update(extra)
    return manifest
