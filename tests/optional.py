"""What a test needs that a fresh clone may lack: the real datasets, an optional extra, a browser.

Where it is missing the test is skipped with one reason line naming what is missing and how to get it, so that
README's ``pip install -e .`` and ``python -m pytest`` pass on any machine. Where ``AUTOSEG_REQUIRE_ALL_TESTS=1``
(CI sets it) the same test fails instead: a run that proves the whole suite cannot skip anything silently.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_ALL_VARIABLE = "AUTOSEG_REQUIRE_ALL_TESTS"
# A folder holding Dataset004_Hippocampus and Dataset018_HC18; by default ../shared/datasets beside the project.
TEST_DATA_VARIABLE = "AUTOSEG_TEST_DATA"
# The browser the report test opens report.html in; by default the first of BROWSERS on PATH.
BROWSER_VARIABLE = "AUTOSEG_BROWSER"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
REPOSITORY = Path(__file__).resolve().parents[1]


def missing(reason: str) -> NoReturn:
    """Skip the calling test (or test module) for ``reason``; fail it where every test is required to run."""
    if os.environ.get(REQUIRE_ALL_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1: no test may be skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def datasets_folder() -> Path:
    """Where the real datasets are looked for: ``$AUTOSEG_TEST_DATA``, else ``../shared/datasets``."""
    configured = os.environ.get(TEST_DATA_VARIABLE)
    folder = Path(configured).expanduser() if configured else REPOSITORY.parent / "shared" / "datasets"
    return folder.resolve()


def dataset_available(name: str) -> bool:
    return (datasets_folder() / name / "dataset.json").is_file()


def require_dataset(name: str) -> Path:
    """The raw folder of the real dataset ``name``; the test is skipped (or fails, see above) without it."""
    if not dataset_available(name):
        missing(f"real dataset {name} not found in {datasets_folder()}: the tests on real data need the project's "
                f"shared datasets at ../shared/datasets, or their folder named in {TEST_DATA_VARIABLE}")
    return datasets_folder() / name


def require_module(name: str, *, extra: str) -> ModuleType:
    """``import name`` for a test of the optional extra ``extra``; skipped (or failing) where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"optional dependency {name} not installed: pip install -e '.[{extra}]'")


def require_browser() -> Path:
    """A headless-capable Chromium for the HTML report test; skipped (or failing) where none is installed."""
    configured = os.environ.get(BROWSER_VARIABLE)
    candidates = [configured] if configured else [shutil.which(name) for name in BROWSERS]
    found = next((Path(path) for path in candidates if path and Path(path).is_file()), None)
    if found is None:
        where = configured if configured else f"{', '.join(BROWSERS)} on PATH"
        missing(f"no browser found ({where}) for the HTML report test: apt-get install -y chromium, "
                f"or name one in {BROWSER_VARIABLE}")
    return found
