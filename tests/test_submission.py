"""Sharing results: an imported model predicts exactly like the original; submissions are complete and traceable."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from model_helpers import (
    first_identifiers,
    link_cases,
    make_cascade_model_folder,
    make_model_folder,
    tiny_configuration,
)

from autoseg.cli import main
from autoseg.io.images import read_image
from autoseg.sharing.submission import model_hash


def _model(tmp_path: Path, hippocampus_root: Path) -> Path:
    configuration = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    return make_model_folder(tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root,
                             {"3d_fullres": configuration}, folds=(0, 1))


def test_imported_model_predicts_byte_identical_label_maps(tmp_path, hippocampus_root) -> None:
    model = _model(tmp_path, hippocampus_root)
    inputs = link_cases(hippocampus_root, tmp_path / "inputs", first_identifiers(hippocampus_root, 2))
    assert main(["export-model", str(model), str(tmp_path / "model.zip")]) == 0
    assert main(["import-model", str(tmp_path / "model.zip"), str(tmp_path / "colleague")]) == 0
    for source, output in ((model, "original"), (tmp_path / "colleague", "imported")):
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / output), "-m", str(source),
                     "--workers", "0", "--threads", "1"]) == 0
    original = sorted((tmp_path / "original").iterdir())
    assert [p.name for p in original] == [p.name for p in sorted((tmp_path / "imported").iterdir())]
    for path in original:
        assert path.read_bytes() == (tmp_path / "imported" / path.name).read_bytes()


def test_submission_folder_manifest_and_zip(tmp_path, hippocampus_root) -> None:
    model = _model(tmp_path, hippocampus_root)
    identifiers = first_identifiers(hippocampus_root, 2)
    inputs = link_cases(hippocampus_root, tmp_path / "inputs", identifiers)
    status = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--no-tta",
                   "--submission", "team_autoseg", "--workers", "0", "--threads", "1"])
    assert status == 0
    folder = tmp_path / "out" / "team_autoseg"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{i}.nii.gz" for i in identifiers] + ["submission_manifest.json"])
    manifest = json.loads((folder / "submission_manifest.json").read_text())
    assert manifest["configurations"] == ["3d_fullres"]
    assert manifest["folds"] == {"3d_fullres": ["0", "1"]}
    assert manifest["test_time_mirroring"] is False
    assert len(manifest["model_hash"]) == 64
    assert set(manifest["versions"]) >= {"autoseg", "torch", "numpy", "SimpleITK", "python"}
    assert set(manifest["seeds"]) == {"3d_fullres/fold_0", "3d_fullres/fold_1"}
    for identifier in identifiers:
        labels = np.unique(read_image(folder / f"{identifier}.nii.gz").array)
        assert set(labels.tolist()) <= {0, 1, 2}  # the dataset's declared label values
    with zipfile.ZipFile(tmp_path / "out" / "team_autoseg.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"team_autoseg/{name}" for name in names)
        manifest_bytes = (folder / "submission_manifest.json").read_bytes()
        assert archive.read("team_autoseg/submission_manifest.json") == manifest_bytes
    # The hash identifies exactly the checkpoints used: dropping one changes it.
    checkpoints = sorted(model.glob("models/3d_fullres/fold_*/checkpoint_final.pt"))
    assert model_hash(model, checkpoints) == manifest["model_hash"]
    assert model_hash(model, checkpoints[:1]) != manifest["model_hash"]


def _cascade_model(tmp_path: Path, hippocampus_root: Path) -> Path:
    """A model folder whose recipe is the cascade: predicting it also runs the 3d_lowres folds."""
    model = make_cascade_model_folder(tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root, folds=(0, 1))
    (model / "inference.json").write_text(json.dumps(
        {"selected": "3d_cascade_fullres", "models": [{"configuration": "3d_cascade_fullres", "folds": ["0", "1"]}]}
    ))
    return model


def test_an_exported_cascade_carries_its_low_resolution_stage_and_predicts_identically(
    tmp_path, hippocampus_root
) -> None:
    model = _cascade_model(tmp_path, hippocampus_root)
    inputs = link_cases(hippocampus_root, tmp_path / "inputs", first_identifiers(hippocampus_root, 1))
    assert main(["export-model", str(model), str(tmp_path / "cascade.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "cascade.zip") as archive:
        names = set(archive.namelist())
    assert {f"models/3d_lowres/fold_{k}/checkpoint_final.pt" for k in (0, 1)} <= names
    assert not any(name.startswith("models/3d_fullres/") for name in names)  # not used by the recipe
    assert main(["import-model", str(tmp_path / "cascade.zip"), str(tmp_path / "colleague")]) == 0
    for source, output in ((model, "original"), (tmp_path / "colleague", "imported")):
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / output), "-m", str(source), "--no-tta",
                     "--workers", "0", "--threads", "1"]) == 0
    for path in sorted((tmp_path / "original").iterdir()):
        assert path.read_bytes() == (tmp_path / "imported" / path.name).read_bytes()


def test_a_cascade_submission_hashes_every_checkpoint_and_zips_only_what_it_wrote(tmp_path, hippocampus_root) -> None:
    model = _cascade_model(tmp_path, hippocampus_root)
    identifiers = first_identifiers(hippocampus_root, 1)
    inputs = link_cases(hippocampus_root, tmp_path / "inputs", identifiers)
    stale = tmp_path / "out" / "team" / "hippocampus_999.nii.gz"  # left over from an earlier submission
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not part of this submission")
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--no-tta",
                 "--submission", "team", "--workers", "0", "--threads", "1"]) == 0
    manifest = json.loads((tmp_path / "out" / "team" / "submission_manifest.json").read_text())
    used = sorted(model.glob("models/3d_*/fold_*/checkpoint_final.pt"))
    used = [path for path in used if path.parts[-3] != "3d_fullres"]
    assert len(used) == 4  # two cascade folds and the two low-resolution folds they need
    assert manifest["model_hash"] == model_hash(model, used)
    assert set(manifest["files"]) == {f"{identifier}.nii.gz" for identifier in identifiers}
    with zipfile.ZipFile(tmp_path / "out" / "team.zip") as archive:
        assert "team/hippocampus_999.nii.gz" not in archive.namelist()


def test_a_cascade_on_anisotropic_ct_like_volumes_predicts_identically_after_export_import_on_the_input_grid(
    tmp_path,
) -> None:
    """Item 6 of issue 27 at test size: a CT-like phantom (int16 HU, anisotropic voxels, a test volume of another
    slice spacing), CT normalisation, anisotropic resampling, a coarser 3d_lowres stage feeding 3d_cascade_fullres,
    mirroring on."""
    from test_ct_phantom import benchmark_module

    phantom = benchmark_module("ct_phantom").generate(tmp_path / "raw" / "Dataset990_TinyCT", cases=2, seed=5,
                                                      test_slices=12, in_plane=48, slices=(8, 8), verbose=False)
    ct = [{"scheme": "ct", "clip_low": -100.0, "clip_high": 250.0, "mean": 60.0, "std": 40.0}]
    anisotropic = {"anisotropic": True, "image_order": 3, "label_order": 1, "coarse_axis_order": 0}
    fullres = {**tiny_configuration(dimension=3, spacing=(4.0, 7.0, 7.0), patch_size=(8, 32, 32)),
               "normalization": ct, "resampling": anisotropic}
    lowres = {"inherits_from": "3d_fullres", "spacing": [6.0, 14.0, 14.0], "patch_size": [8, 16, 16]}
    cascade = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    model = make_model_folder(tmp_path / "work" / "Dataset990_TinyCT", phantom,
                              {"3d_fullres": fullres, "3d_lowres": lowres, "3d_cascade_fullres": cascade},
                              folds=(0, 1), in_channels_extra={"3d_cascade_fullres": 4})  # one-hot foreground
    (model / "inference.json").write_text(json.dumps(
        {"selected": "3d_cascade_fullres", "models": [{"configuration": "3d_cascade_fullres", "folds": ["0", "1"]}]}
    ))
    assert main(["export-model", str(model), str(tmp_path / "ct.zip")]) == 0
    assert main(["import-model", str(tmp_path / "ct.zip"), str(tmp_path / "colleague")]) == 0
    for source, output in ((model, "original"), (tmp_path / "colleague", "imported")):
        assert main(["predict", "-i", str(phantom / "imagesTs"), "-o", str(tmp_path / output), "-m", str(source),
                     "--workers", "0", "--threads", "1"]) == 0
    image = sitk.ReadImage(str(phantom / "imagesTs" / "ct_002_0000.nii.gz"))
    original, imported = (tmp_path / folder / "ct_002.nii.gz" for folder in ("original", "imported"))
    assert original.read_bytes() == imported.read_bytes()
    label = sitk.ReadImage(str(original))
    assert image.GetSize()[:2] == (48, 48) and max(image.GetSpacing()) > 2 * min(image.GetSpacing())  # anisotropic
    assert label.GetSize() == image.GetSize()
    assert np.allclose(label.GetSpacing(), image.GetSpacing()) and np.allclose(label.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= {0, 1, 2, 3, 4}
