"""A dataset that gains, loses or changes cases after planning is caught by every stage, never used half-stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.errors import UserError
from autoseg.training.splits import group_by_leading_number, load_or_create_splits, make_splits


def _copy_case(source_root: Path, source: str, dataset: Path, identifier: str) -> None:
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        shutil.copyfile(source_root / folder / f"{source}{suffix}", dataset / folder / f"{identifier}{suffix}")


def _add_case(source_root: Path, dataset: Path, identifier: str) -> None:
    _copy_case(source_root, identifier, dataset, identifier)
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["numTraining"] += 1
    (dataset / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture
def planned(tmp_path, hippocampus_root, copy_cases):
    dataset = copy_cases(hippocampus_root, 6)
    work = tmp_path / "work"
    assert main(["plan", str(dataset), "--work-dir", str(work)]) == 0
    assert main(["preprocess", str(dataset), "--work-dir", str(work), "-c", "3d_fullres", "--workers", "1"]) == 0
    return dataset, work / dataset.name


def test_every_stage_names_the_cases_that_changed_after_planning(planned, hippocampus_root, capsys) -> None:
    dataset, work = planned
    identifiers = sorted(p.name[: -len(".nii.gz")] for p in (dataset / "labelsTr").iterdir())
    extra = next(p.name[: -len(".nii.gz")] for p in sorted((hippocampus_root / "labelsTr").iterdir())
                 if p.name[: -len(".nii.gz")] not in identifiers)
    _add_case(hippocampus_root, dataset, extra)
    changed = identifiers[0]  # rewritten with another case's files: same name, other content
    _copy_case(dataset, identifiers[1], dataset, changed)
    capsys.readouterr()
    for command in (["preprocess", str(dataset), "-c", "3d_fullres"], ["train", str(dataset), "3d_fullres", "0"],
                    ["run", str(dataset), "--folds", "0"]):
        assert main([*command, "--work-dir", str(work.parent)]) == 2, command
        stderr = capsys.readouterr().err
        messages = [line for line in stderr.splitlines() if line.startswith("autoseg")]  # not progress bars
        assert len(messages) == 1 and "Traceback" not in stderr, stderr  # one sentence
        error = messages[0]
        assert f"1 added ({extra})" in error and f"1 changed ({changed})" in error, error
    assert "--replan" in error  # `run` keeps plans by default: it says how to plan again

    # Planning again accepts the new cases; preprocessing then redoes exactly the added and the changed case.
    before = {p.name: p.read_bytes() for p in (work / "preprocessed" / "3d_fullres").glob("*.npy")}
    assert main(["plan", str(dataset), "--work-dir", str(work.parent)]) == 0
    capsys.readouterr()
    assert main(["preprocess", str(dataset), "--work-dir", str(work.parent), "-c", "3d_fullres", "--workers", "1"]) == 0
    assert "2 case(s) preprocessed, 5 already done" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in (work / "preprocessed" / "3d_fullres").glob("*.npy")}
    assert after[f"{changed}.npy"] != before[f"{changed}.npy"]
    assert after[f"{identifiers[2]}.npy"] == before[f"{identifiers[2]}.npy"]


def test_existing_folds_that_leave_out_new_cases_are_refused(tmp_path) -> None:
    path = tmp_path / "splits.json"
    cases = [f"case_{i}" for i in range(10)]
    load_or_create_splits(path, cases)
    assert load_or_create_splits(path, cases) == json.loads(path.read_text())  # unchanged dataset: reused
    with pytest.raises(UserError, match=r"leave out 2 case\(s\) of the dataset \(case_10, case_11\)"):
        load_or_create_splits(path, [*cases, "case_10", "case_11"])


def test_grouping_asked_for_after_ungrouped_folds_were_made_is_refused(tmp_path) -> None:
    # HC18-like names: NNN_HC and NNN_2HC are scans of one fetus.
    cases = [f"{n:03d}_HC" for n in range(12)] + [f"{n:03d}_2HC" for n in range(12)]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(make_splits(cases)))  # plain K-fold: some fetus lands in train and validation
    with pytest.raises(UserError, match="not made with this --group-cases"):
        load_or_create_splits(path, cases, grouper=group_by_leading_number)
    grouped = tmp_path / "grouped.json"
    splits = load_or_create_splits(grouped, cases, grouper=group_by_leading_number)
    assert load_or_create_splits(grouped, cases, grouper=group_by_leading_number) == splits
    for fold in splits:
        assert not {c[:3] for c in fold["train"]} & {c[:3] for c in fold["val"]}
