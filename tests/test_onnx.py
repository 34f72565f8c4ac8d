"""ONNX deployment: `autoseg export-onnx` and `autoseg predict --engine onnx` against the torch engine on real cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_helpers import (
    first_identifiers,
    link_cases,
    make_cascade_model_folder,
    make_model_folder,
    tiny_configuration,
)
from optional import require_module

from autoseg.cli import main
from autoseg.errors import UserError
from autoseg.evaluation.metrics import overlap_metrics
from autoseg.inference import onnx_export
from autoseg.inference.loading import load_ensemble
from autoseg.inference.model_source import ModelSource
from autoseg.io.images import read_image, read_image_header
from autoseg.records.onnx_export import ONNX_RECIPE_FILE as ONNX_RECIPE
from autoseg.records.onnx_export import OnnxExport
from autoseg.utils.files import dumps_json, sha256_file, write_json


@pytest.fixture(scope="session", autouse=True)  # before the data fixtures and the exports
def _onnx_extra() -> None:
    """Every test here needs the ``onnx`` extra: skipped without it (a failure, per test, where all must run)."""
    require_module("onnx", extra="onnx")
    require_module("onnxruntime", extra="onnx")


POSTPROCESSING = {"keep_largest_foreground": False, "keep_largest_per_class": [1, 2], "connectivity": "full"}


def export(model: Path, destination: Path, *options: str) -> Path:
    assert main(["export-onnx", str(model), str(destination), "--threads", "1", *options]) == 0
    return destination


def predict(model: Path, inputs: Path, output: Path, *options: str) -> Path:
    code = main(["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--workers", "0",
                 "--threads", "1", "--precision", "float32", *options])
    assert code == 0
    return output


def assert_engines_agree(torch_output: Path, onnx_output: Path, inputs: Path, identifiers: list[str]) -> None:
    """Each case: Dice >= 0.999 per foreground label between the two label maps, and the input's exact geometry."""
    for identifier in identifiers:
        from_torch = read_image(torch_output / f"{identifier}.nii.gz")
        from_onnx = read_image(onnx_output / f"{identifier}.nii.gz")
        assert from_onnx.geometry == from_torch.geometry
        assert read_image_header(onnx_output / f"{identifier}.nii.gz") == read_image_header(
            inputs / f"{identifier}_0000.nii.gz")
        labels = sorted(set(np.unique(from_torch.array)) - {0})
        assert labels, "a label map of background only would make the comparison meaningless"
        for label in labels:
            dice = overlap_metrics(from_onnx.array == label, from_torch.array == label)["dice"]
            assert dice >= 0.999, (identifier, label, dice)


@pytest.fixture(scope="module")
def hippocampus_models(tmp_path_factory, hippocampus_root) -> tuple[Path, Path]:
    """A 2-fold 3d_fullres model whose recipe has post-processing, and its ONNX export."""
    work = tmp_path_factory.mktemp("onnx_hippocampus")
    configuration = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24))
    model = make_model_folder(work / "Dataset004_Hippocampus", hippocampus_root, {"3d_fullres": configuration},
                              folds=(0, 1))
    write_json(model / "inference.json", {"models": [{"configuration": "3d_fullres", "folds": [0, 1]}],
                                          "postprocessing": "postprocessing.json"})
    write_json(model / "postprocessing.json", POSTPROCESSING)
    return model, export(model, work / "onnx")


def test_export_writes_a_verified_graph_per_fold_and_the_records_prediction_needs(hippocampus_models):
    model, exported = hippocampus_models
    recipe = json.loads((exported / ONNX_RECIPE).read_text())
    assert recipe["models"] == [{"configuration": "3d_fullres", "folds": ["0", "1"]}]
    # The typed record reads and writes the file unchanged, byte for byte.
    assert dumps_json(OnnxExport.read(exported).to_json()).encode() == (exported / ONNX_RECIPE).read_bytes()
    assert recipe["postprocessing"] == "postprocessing.json"
    entry = recipe["configurations"]["3d_fullres"]
    assert entry["patch_size"] == [24, 32, 24] and entry["num_classes"] == 3 and entry["mirror_axes"] == [0, 1, 2]
    for name in ("dataset.json", "plans.json", "inference.json", "postprocessing.json"):
        assert (exported / name).read_bytes() == (model / name).read_bytes()
    assert not list(exported.rglob("*.pt")), "a deployment must not need the training checkpoints"
    for fold in ("0", "1"):
        record = entry["folds"][fold]
        path = exported / record["file"]
        assert sha256_file(path) == record["sha256"]
        assert record["max_abs_difference_to_torch"] < 1e-3
        onnx = require_module("onnx", extra="onnx")
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        assert [value.name for value in graph.graph.input] == [recipe["input_name"]]
        assert [value.name for value in graph.graph.output] == [recipe["output_name"]]  # full resolution only
        input_shape = graph.graph.input[0].type.tensor_type.shape.dim
        assert input_shape[0].dim_param and not input_shape[0].dim_value  # dynamic batch axis
        assert [dim.dim_value for dim in input_shape[1:]] == [1, 24, 32, 24]
        assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_onnx_and_torch_agree_on_real_hippocampus_cases_with_a_fold_ensemble(
    hippocampus_models, hippocampus_root, tmp_path
):
    model, exported = hippocampus_models
    identifiers = first_identifiers(hippocampus_root, 2)
    inputs = link_cases(hippocampus_root, tmp_path / "in", identifiers)
    from_torch = predict(model, inputs, tmp_path / "torch")
    from_onnx = predict(exported, inputs, tmp_path / "onnx", "--engine", "onnx")
    assert_engines_agree(from_torch, from_onnx, inputs, identifiers)
    ensemble = load_ensemble(ModelSource.onnx_export(exported))
    assert ensemble.members[0].trained_model.folds == ("0", "1")
    assert ensemble.postprocessing.to_json() == POSTPROCESSING


def test_onnx_and_torch_agree_on_real_hc18_images(hc18_root, tmp_path):
    configuration = tiny_configuration(dimension=2, spacing=(1.0, 0.6, 0.6), patch_size=(128, 128), features=(4, 8, 8))
    model = make_model_folder(tmp_path / "work" / "Dataset018_HC18", hc18_root, {"2d": configuration})
    exported = export(model, tmp_path / "onnx")
    identifiers = first_identifiers(hc18_root, 2)
    inputs = link_cases(hc18_root, tmp_path / "in", identifiers)
    from_torch = predict(model, inputs, tmp_path / "torch_out", "--no-tta")
    # One background worker (the command's default) preprocesses and exports while onnxruntime runs.
    from_onnx = predict(exported, inputs, tmp_path / "onnx_out", "--no-tta", "--engine", "onnx", "--workers", "1")
    assert_engines_agree(from_torch, from_onnx, inputs, identifiers)


def test_cascade_exports_and_runs_its_low_resolution_stage(hippocampus_root, tmp_path):
    model = make_cascade_model_folder(tmp_path / "work" / "Dataset004_Hippocampus", hippocampus_root)
    exported = export(model, tmp_path / "onnx", "-c", "3d_cascade_fullres")
    recipe = json.loads((exported / ONNX_RECIPE).read_text())
    assert sorted(recipe["configurations"]) == ["3d_cascade_fullres", "3d_lowres"]
    assert recipe["configurations"]["3d_cascade_fullres"]["in_channels"] == 3  # image + 2 one-hot foreground labels
    identifiers = first_identifiers(hippocampus_root, 1)
    inputs = link_cases(hippocampus_root, tmp_path / "in", identifiers)
    from_torch = predict(model, inputs, tmp_path / "torch_out", "--no-tta", "-c", "3d_cascade_fullres")
    from_onnx = predict(exported, inputs, tmp_path / "onnx_out", "--no-tta", "--engine", "onnx")
    assert_engines_agree(from_torch, from_onnx, inputs, identifiers)


def test_onnx_prediction_needs_neither_checkpoints_nor_the_training_stack(
    hippocampus_models, hippocampus_root, tmp_path
):
    _, exported = hippocampus_models
    inputs = link_cases(hippocampus_root, tmp_path / "in", first_identifiers(hippocampus_root, 1))
    script = (
        "import sys\n"
        "from autoseg.cli import main\n"
        f"code = main(['predict', '-i', {str(inputs)!r}, '-o', {str(tmp_path / 'out')!r}, '-m', {str(exported)!r}, "
        "'--engine', 'onnx', '--no-tta', '--workers', '0', '--threads', '1'])\n"
        "assert code == 0, code\n"
        "print(sorted(name for name in sys.modules if name.startswith('autoseg.training')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1


def test_engine_and_folder_mismatches_are_one_sentence_user_errors(hippocampus_models, hippocampus_root, tmp_path,
                                                                   capsys):
    model, exported = hippocampus_models
    inputs = link_cases(hippocampus_root, tmp_path / "in", first_identifiers(hippocampus_root, 1))
    common = ["-i", str(inputs), "-o", str(tmp_path / "out"), "--workers", "0", "--threads", "1"]
    assert main(["predict", *common, "-m", str(model), "--engine", "onnx"]) == 2
    assert "autoseg export-onnx" in capsys.readouterr().err
    assert main(["predict", *common, "-m", str(exported)]) == 2
    assert "--engine onnx" in capsys.readouterr().err
    assert main(["predict", *common, "-m", str(exported), "--engine", "onnx", "-f", "3"]) == 2
    assert "fold 3 was not exported" in capsys.readouterr().err
    assert main(["predict", *common, "-m", str(exported), "--engine", "onnx", "-c", "2d"]) == 2
    assert "2d was not exported" in capsys.readouterr().err
    assert main(["predict", *common, "-m", str(exported), "--engine", "onnx", "--precision", "bfloat16"]) == 2
    assert "runs in float32" in capsys.readouterr().err

    tampered = shutil.copytree(exported, tmp_path / "tampered")
    with open(tampered / "3d_fullres" / "fold_1.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(UserError, match=r"fold_1\.onnx: differs from the file that was exported"):
        load_ensemble(ModelSource.onnx_export(tampered))


def test_missing_onnxruntime_names_the_optional_extra(hippocampus_models, monkeypatch):
    _, exported = hippocampus_models
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(UserError, match=r'pip install "autoseg\[onnx\]"'):
        load_ensemble(ModelSource.onnx_export(exported))


def test_export_refuses_a_non_empty_folder_and_leaves_nothing_when_verification_fails(
    hippocampus_models, tmp_path, capsys, monkeypatch
):
    model, _ = hippocampus_models
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    assert main(["export-onnx", str(model), str(occupied)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [path.name for path in occupied.iterdir()] == ["notes.txt"]

    # A graph that does not reproduce torch (forced here by a tolerance no graph can meet) is never published.
    monkeypatch.setattr(onnx_export, "VERIFICATION_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="differs from torch"):
        onnx_export.export_onnx_model(model, tmp_path / "rejected", folds=[0])
    assert not (tmp_path / "rejected").exists()
    assert not (tmp_path / "rejected.partial").exists()
