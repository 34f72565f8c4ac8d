"""Predict with networks exported by ``autoseg export-onnx``: onnxruntime sessions in place of torch modules.

Only the network changes: each fold's ONNX file runs in an onnxruntime ``InferenceSession`` wrapped as a callable
``network(batch) -> logits`` on torch tensors, which the ordinary ``Predictor`` drives with the same preprocessing,
sliding window, test-time mirroring, fold averaging, export to the input's geometry and post-processing as the
torch engine. Nothing here imports ``autoseg.training`` or reads a checkpoint, so a deployment needs only the
exported folder, autoseg and ``pip install "autoseg[onnx]"``.

Example (a code block, not a doctest: it needs an exported folder, and exporting even a tiny network takes ~10 s of
CPU and the ``onnx`` extra; tests/test_onnx.py runs the same calls)::

    models = load_onnx_ensemble("hippocampus_onnx", threads=2)
    models.predict_files([["a_0000.nii.gz"]], ["out/a.nii.gz"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.model_folder import TrainedModel
from autoseg.inference.predictor import Predictor
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration, Plans, load_plans
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import read_json, sha256_file

ONNX_RECIPE = "onnx_recipe.json"
ONNX_RECIPE_FORMAT = "autoseg-onnx-1"
INSTALL_HINT = 'pip install "autoseg[onnx]"'


def is_onnx_model_folder(folder: str | os.PathLike[str]) -> bool:
    """True for a folder written by ``autoseg export-onnx`` (it holds ``onnx_recipe.json``)."""
    return (Path(folder).expanduser() / ONNX_RECIPE).is_file()


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a ``UserError`` saying how to install the optional extra."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"onnxruntime is not installed; run `{INSTALL_HINT}` to predict with --engine onnx.") from None
    return onnxruntime


class OnnxNetwork:
    """One exported fold as a callable ``network(batch) -> logits`` on float32 torch tensors (CPU).

    The sliding window calls it with ``(B, C, *patch)`` batches; onnxruntime runs the graph with ``threads``
    intra-op threads (one inter-op thread: the graph is a chain of convolutions with nothing to run side by side).
    """

    def __init__(self, path: str | os.PathLike[str], *, input_name: str, output_name: str, threads: int = 1) -> None:
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads would otherwise spin between batches and hold cores that other processes need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.input_name = input_name
        self.output_name = output_name
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable or invalid graphs
            raise UserError(f"{self.path}: onnxruntime cannot load this file ({error}); export it again.") from None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        inputs = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: inputs})
        return torch.from_numpy(logits)

    def __repr__(self) -> str:
        return f"OnnxNetwork({str(self.path)!r})"


def read_onnx_recipe(folder: Path) -> dict:
    """``onnx_recipe.json`` of an exported folder, checked for the keys prediction needs."""
    path = folder / ONNX_RECIPE
    if not path.is_file():
        raise UserError(
            f"{folder}: holds no ONNX networks ({ONNX_RECIPE} missing); create them with "
            f"`autoseg export-onnx MODEL_FOLDER {folder}` or predict with --engine torch."
        )
    recipe = read_json(path)
    if not isinstance(recipe, dict) or recipe.get("format") != ONNX_RECIPE_FORMAT or not recipe.get("models"):
        raise UserError(f"{path}: is not an autoseg ONNX recipe ({ONNX_RECIPE_FORMAT}); export the model again.")
    return recipe


def _verified_file(folder: Path, entry: dict) -> Path:
    """The ONNX file of one fold, after checking that it is the file that was exported and verified."""
    path = folder / entry["file"]
    if not path.is_file():
        raise UserError(f"{path}: ONNX file missing; export the model again with `autoseg export-onnx`.")
    if sha256_file(path) != entry["sha256"]:
        raise UserError(f"{path}: differs from the file that was exported (SHA-256 mismatch); export it again.")
    return path


def _chosen_folds(available: Sequence[str], requested: Sequence[int | str] | str | None, *, where: str) -> list[str]:
    if requested is None:
        return list(available)
    names = [str(fold) for fold in ([requested] if isinstance(requested, (str, int)) else requested)]
    missing = [name for name in names if name not in available]
    if missing:
        raise UserError(
            f"{where}: fold {missing[0]} was not exported (exported folds: {', '.join(available)}); "
            "choose other folds with -f or export them."
        )
    return names


def onnx_predictor(
    folder: Path,
    recipe: dict,
    configuration_name: str,
    *,
    folds: Sequence[int | str] | str | None = None,
    plans: Plans,
    dataset: RawDataset,
    tta: bool = True,
    step_size: float = 0.5,
    batch_size: int = 2,
    threads: int = 1,
) -> Predictor:
    """A ``Predictor`` of one exported configuration (and of its previous cascade stage) running on onnxruntime."""
    exported_configurations = recipe.get("configurations", {})
    exported = exported_configurations.get(configuration_name)
    if exported is None:
        raise UserError(
            f"{folder / ONNX_RECIPE}: configuration {configuration_name} was not exported "
            f"(exported: {', '.join(exported_configurations)}); choose one with -c or export it."
        )
    fold_names = _chosen_folds(list(exported["folds"]), folds, where=str(folder / ONNX_RECIPE))
    paths = [_verified_file(folder, exported["folds"][name]) for name in fold_names]
    networks = [
        OnnxNetwork(path, input_name=recipe["input_name"], output_name=recipe["output_name"], threads=threads)
        for path in paths
    ]
    previous_stage = None
    if exported.get("previous_stage"):
        previous_stage = onnx_predictor(
            folder, recipe, exported["previous_stage"], folds=folds, plans=plans, dataset=dataset, tta=tta,
            step_size=step_size, batch_size=batch_size, threads=threads,
        )
    planned = plans.configuration(configuration_name)
    configuration = Configuration.from_json(
        configuration_name, exported["configuration"], transpose_forward=planned.transpose_forward,
        transpose_backward=planned.transpose_backward,
    )
    return Predictor(
        configuration_name=configuration_name, configuration=configuration, dataset=dataset,
        networks=networks, device=torch.device("cpu"), tta=tta, step_size=step_size, batch_size=batch_size,
        precision="float32", previous_stage=previous_stage,
        trained_model=TrainedModel(folder, configuration_name, tuple(fold_names), tuple(paths)),
    )


def load_onnx_ensemble(
    onnx_folder: str | os.PathLike[str],
    *,
    configuration: str | None = None,
    folds: Sequence[int | str] | str | None = None,
    tta: bool = True,
    step_size: float = 0.5,
    batch_size: int = 2,
    threads: int = 1,
    use_postprocessing: bool = True,
) -> ModelEnsemble:
    """What ``autoseg predict --engine onnx`` runs: the exported recipe, or the one ``configuration`` named.

    Follows the same rules as ``ModelEnsemble.from_model_folder``: without ``configuration`` every exported member
    (one configuration or an ensemble) with its exported folds, and the post-processing chosen for that recipe;
    naming a configuration overrides the recipe, and post-processing then applies only when the recipe is exactly
    that configuration. ``folds`` given apply to every member and must have been exported.

    Raises:
        UserError: not an exported folder, onnxruntime missing, or a configuration/fold that was not exported.
    """
    folder = Path(onnx_folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder does not exist.")
    recipe = read_onnx_recipe(folder)
    import_onnxruntime()
    work_folder = WorkFolder.at(folder)
    plans = load_plans(work_folder.plans)
    dataset = work_folder.read_dataset()
    recipe_members = [str(entry["configuration"]) for entry in recipe["models"]]
    recipe_folds = {str(entry["configuration"]): entry.get("folds") for entry in recipe["models"]}
    chosen = recipe_members if configuration is None else [configuration]
    members = [
        onnx_predictor(
            folder, recipe, name, folds=folds if folds is not None else recipe_folds.get(name), plans=plans,
            dataset=dataset, tta=tta, step_size=step_size, batch_size=batch_size, threads=threads,
        )
        for name in chosen
    ]
    postprocessing = None
    if use_postprocessing and chosen == recipe_members and recipe.get("postprocessing"):
        postprocessing = PostprocessingDecision.read(folder / str(recipe["postprocessing"]))
    return ModelEnsemble(members=members, postprocessing=postprocessing)
