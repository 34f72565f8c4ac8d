"""Load a predictor from the networks exported by ``autoseg export-onnx``: onnxruntime sessions in place of torch.

Only the network changes: each fold's ONNX file runs in an onnxruntime ``InferenceSession`` wrapped as a callable
``network(batch) -> logits`` on torch tensors, which the ordinary ``Predictor`` drives with the same preprocessing,
sliding window, test-time mirroring, fold averaging, export to the input's geometry and post-processing as the
torch engine; which configurations and folds to load is decided by ``autoseg.inference.loading``, as for
checkpoints. Nothing here imports ``autoseg.training`` or reads a checkpoint, so a deployment needs only the exported
folder, autoseg and ``pip install "autoseg[onnx]"``.

Example (a code block, not a doctest: it needs an exported folder, and exporting even a tiny network takes ~10 s of
CPU and the ``onnx`` extra; tests/test_onnx.py runs the same calls)::

    models = load_ensemble(ModelSource.onnx_export("hippocampus_onnx"), PredictionOptions(threads=2))
    models.predict_files([["a_0000.nii.gz"]], ["out/a.nii.gz"])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.inference.model_folder import TrainedModel
from autoseg.inference.model_source import folds_to_load
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.records.dataset import RawDataset
from autoseg.records.onnx_export import ONNX_RECIPE_FILE, ExportedFold, OnnxExport
from autoseg.records.plans import Configuration, Plans
from autoseg.utils.files import sha256_file

INSTALL_HINT = 'pip install "autoseg[onnx]"'


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


def _verified_file(folder: Path, entry: ExportedFold) -> Path:
    """The ONNX file of one fold, after checking that it is the file that was exported and verified."""
    path = folder / entry.file
    if not path.is_file():
        raise UserError(f"{path}: ONNX file missing; export the model again with `autoseg export-onnx`.")
    if sha256_file(path) != entry.sha256:
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


@dataclasses.dataclass(frozen=True)
class OnnxModels:
    """An export folder read for prediction: its record, plans and dataset description."""

    folder: Path
    export: OnnxExport
    plans: Plans
    dataset: RawDataset


def load_onnx_predictor(
    models: OnnxModels, configuration_name: str, *, folds: Sequence[int | str] | str | None,
    options: PredictionOptions,
) -> Predictor:
    """The predictor of one exported configuration (and of its previous cascade stage) running on onnxruntime.

    ``folds`` None = the recipe's folds of the configuration, else every exported fold. The networks run on the
    CPU in float32 whatever ``options`` say (``autoseg predict`` refuses other devices and precisions).
    """
    where = models.folder / ONNX_RECIPE_FILE
    exported = models.export.configurations.get(configuration_name)
    if exported is None:
        raise UserError(
            f"{where}: configuration {configuration_name} was not exported "
            f"(exported: {', '.join(models.export.configurations)}); choose one with -c or export it."
        )
    fold_names = _chosen_folds(
        list(exported.folds), folds_to_load(models.export.recipe, configuration_name, folds), where=str(where)
    )
    paths = [_verified_file(models.folder, exported.folds[name]) for name in fold_names]
    networks = [
        OnnxNetwork(path, input_name=models.export.input_name, output_name=models.export.output_name,
                    threads=options.threads)
        for path in paths
    ]
    previous_stage = None
    if exported.previous_stage:
        previous_stage = load_onnx_predictor(models, exported.previous_stage, folds=folds, options=options)
    planned = models.plans.configuration(configuration_name)
    configuration = Configuration.from_json(
        configuration_name, exported.configuration, transpose_forward=planned.transpose_forward,
        transpose_backward=planned.transpose_backward,
    )
    return Predictor(
        configuration_name=configuration_name, configuration=configuration, dataset=models.dataset,
        networks=networks, options=dataclasses.replace(options, device="cpu", precision="float32"),
        previous_stage=previous_stage,
        trained_model=TrainedModel(models.folder, configuration_name, tuple(fold_names), tuple(paths)),
    )
