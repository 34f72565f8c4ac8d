"""Reproducibility: the same raw dataset and seed give byte-identical fingerprint, plans and splits."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoseg.cli import main
from autoseg.data.raw_folder import load_raw_dataset
from autoseg.training.splits import DEFAULT_SPLIT_SEED, load_or_create_splits


def test_planning_twice_from_scratch_gives_byte_identical_json(tmp_path: Path, hippocampus_root: Path) -> None:
    outputs = []
    for attempt in ("first", "second"):
        work = tmp_path / attempt
        assert main(["plan", str(hippocampus_root), "--work-dir", str(work), "--workers", "2"]) == 0
        folder = work / hippocampus_root.name
        case_ids = [case.identifier for case in load_raw_dataset(hippocampus_root).training_cases]
        load_or_create_splits(folder / "splits.json", case_ids, seed=DEFAULT_SPLIT_SEED)
        names = ("fingerprint.json", "plans.json", "splits.json")
        outputs.append({name: (folder / name).read_bytes() for name in names})
        shutil.rmtree(work)  # from scratch: nothing of the first run survives into the second
    assert outputs[0] == outputs[1]
