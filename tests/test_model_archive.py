"""Model export/import: a round trip is exact, and crafted malicious archives are refused without side effects."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.sharing.model_archive import export_model, import_model


def _model_folder(root: Path) -> Path:
    folder = root / "Dataset999_Tiny"
    (folder / "models" / "3d_fullres" / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (folder / "dataset.json").write_text(json.dumps({"name": "Tiny"}))
    (folder / "fingerprint.json").write_text(json.dumps({"cases": {}}))
    state = {"network": {"weight": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    torch.save(state, folder / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt")
    torch.save(state, folder / "models" / "3d_fullres" / "fold_0" / "checkpoint_latest.pt")
    return folder


def _snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_export_import_round_trip_is_exact(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    assert main(["export-model", str(folder), str(tmp_path / "model.zip")]) == 0
    assert main(["import-model", str(tmp_path / "model.zip"), str(tmp_path / "imported")]) == 0
    imported = tmp_path / "imported"
    for name in ("plans.json", "dataset.json", "fingerprint.json", "models/3d_fullres/fold_0/checkpoint_final.pt"):
        assert (imported / name).read_bytes() == (folder / name).read_bytes()
    # Only the chosen checkpoint travels.
    assert not (imported / "models/3d_fullres/fold_0/checkpoint_latest.pt").exists()
    manifest = json.loads((imported / "manifest.json").read_text())
    assert set(manifest["versions"]) >= {"autoseg", "torch", "numpy", "SimpleITK", "python"}
    loaded = torch.load(imported / "models/3d_fullres/fold_0/checkpoint_final.pt", weights_only=True)
    assert torch.equal(loaded["network"]["weight"], torch.arange(6.0).reshape(2, 3))


def test_exporting_twice_gives_identical_archives(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    export_model(folder, tmp_path / "a.zip")
    export_model(folder, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def _rewrite_archive(source: Path, target: Path, edit) -> None:
    """Copy ``source`` to ``target`` letting ``edit(name, data, manifest)`` change members; hashes stay as they were."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    manifest = json.loads(members.pop("manifest.json"))
    extra = edit(members, manifest)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("manifest.json", json.dumps(manifest))
        for info, data in extra or []:
            archive.writestr(info, data)


def _path_traversal(members, manifest):
    members["../escaped.json"] = b"{}"
    manifest["files"]["../escaped.json"] = "0" * 64


def _absolute_path(members, manifest):
    members["/tmp/autoseg_absolute_escape.json"] = b"{}"
    manifest["files"]["/tmp/autoseg_absolute_escape.json"] = "0" * 64


def _symlink(members, manifest):
    info = zipfile.ZipInfo("models/link.json")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return [(info, b"/etc/passwd")]


def _pickle_file(members, manifest):
    members["postprocessing.pkl"] = pickle.dumps({"function": "os.system"})


def _pickled_object_in_checkpoint(members, manifest):
    buffer = io.BytesIO()
    torch.save({"network": {}, "options": argparse.Namespace(evil=True)}, buffer)
    name = "models/3d_fullres/fold_0/checkpoint_final.pt"
    members[name] = buffer.getvalue()
    import hashlib

    manifest["files"][name] = hashlib.sha256(members[name]).hexdigest()


def _hash_mismatch(members, manifest):
    members["plans.json"] = b'{"configurations": {"tampered": {}}}'


@pytest.mark.parametrize(
    ("attack", "expected_words"),
    [
        (_path_traversal, "escape"),
        (_absolute_path, "absolute path"),
        (_symlink, "symbolic link"),
        (_pickle_file, "pickle"),
        (_pickled_object_in_checkpoint, "pickled objects"),
        (_hash_mismatch, "SHA-256"),
    ],
)
def test_malicious_archives_are_refused_and_write_nothing(tmp_path, capsys, attack, expected_words) -> None:
    folder = _model_folder(tmp_path / "source")
    export_model(folder, tmp_path / "good.zip")
    _rewrite_archive(tmp_path / "good.zip", tmp_path / "bad.zip", attack)
    work = tmp_path / "work"
    work.mkdir()
    before = _snapshot(tmp_path)
    status = main(["import-model", str(tmp_path / "bad.zip"), str(work / "destination")])
    assert status == 2
    message = capsys.readouterr().err
    assert expected_words in message and "bad.zip" in message
    assert _snapshot(tmp_path) == before  # nothing extracted anywhere, not even the destination folder
    assert not Path("/tmp/autoseg_absolute_escape.json").exists()


def test_import_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    export_model(folder, tmp_path / "model.zip")
    destination = tmp_path / "occupied"
    destination.mkdir()
    (destination / "keep.txt").write_text("user data")
    with pytest.raises(Exception, match="not empty"):
        import_model(tmp_path / "model.zip", destination)
    assert (destination / "keep.txt").read_text() == "user data"


def test_export_without_checkpoints_explains_itself(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "Dataset1_Empty"
    folder.mkdir()
    (folder / "plans.json").write_text("{}")
    assert main(["export-model", str(folder), str(tmp_path / "x.zip")]) == 2
    assert "no trained checkpoint" in capsys.readouterr().err


def test_written_artifacts_get_ordinary_file_permissions(tmp_path: Path) -> None:
    import os

    from autoseg.utils.files import write_json

    write_json(tmp_path / "plans.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "plans.json").stat().st_mode & 0o777 == 0o666 & ~mask
