"""Export a trained model folder to ONNX networks plus the JSON records that prediction needs (``export-onnx``).

The folder written holds one ONNX graph per fold per configuration of the model's recipe (with the ``3d_lowres``
stage of a cascade), the records copied from the model folder (``dataset.json``, ``plans.json``, ``inference.json``
and ``postprocessing.json`` when present) and ``onnx_recipe.json``: what the sliding window needs (patch size,
default step size, mirror axes, number of classes, input channels, the configuration each fold was trained with),
the opset and the graph's input/output names, which file is which fold, and the SHA-256 of every file.

Graphs are made with ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, the default since
torch 2.9; the TorchScript one is deprecated). Each graph is the network in inference mode: the full-resolution
logits only (no deep-supervision heads), float32, a dynamic batch axis and a fixed patch. Every graph is run with
onnxruntime on a random batch and compared with torch before the export counts as done; the folder is built as
``OUT.partial`` and renamed to ``OUT`` only at the end, so an interrupted export is never taken for a finished one.

Example (a code block, not a doctest: exporting even a tiny network takes ~10 s of CPU and needs the ``onnx``
extra; tests/test_onnx.py runs the same call)::

    export_onnx_model("autoseg_work/Dataset004_Hippocampus", "hippocampus_onnx")
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from autoseg import __version__
from autoseg.errors import UserError
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.loading import load_ensemble
from autoseg.inference.model_source import ModelSource
from autoseg.inference.onnx_engine import INSTALL_HINT, OnnxNetwork, import_onnxruntime
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.records.onnx_export import ExportedConfiguration, ExportedFold, OnnxExport
from autoseg.records.work_folder import DATASET_FILE, INFERENCE_RECIPE_FILE, PLANS_FILE, WorkFolder
from autoseg.utils.files import sha256_file

ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
COPIED_RECORDS = (DATASET_FILE, PLANS_FILE, INFERENCE_RECIPE_FILE)
# Largest |onnxruntime - torch| accepted, relative to the largest |logit| (at least 1): float32 kernels of two
# libraries sum in different orders; measured differences are 1e-6..1e-5 of the logits' scale.
VERIFICATION_TOLERANCE = 1e-3
VERIFICATION_BATCH = 3  # differs from the batch of 2 used for tracing, so the dynamic batch axis is exercised


def _require_export_libraries() -> None:
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"{module} is not installed; run `{INSTALL_HINT}` to export ONNX networks.") from None
    import_onnxruntime()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes about torchvision operators these networks never use and its internal deprecations.

    They say nothing about the graph; whether the export is right is decided by comparing it with torch.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def network_input_channels(predictor: Predictor) -> int:
    """Image channels, plus one per foreground label for a cascade stage fed the previous stage's segmentation."""
    extra = len(predictor.dataset.foreground_labels) if predictor.previous_stage is not None else 0
    return predictor.dataset.num_channels + extra


def export_network(network: torch.nn.Module, path: Path, *, input_shape: Sequence[int], opset: int) -> None:
    """Write ``network`` (full-resolution logits only, float32, dynamic batch axis) as an ONNX file at ``path``."""
    network = network.float().eval()
    if hasattr(network, "set_deep_supervision"):
        network.set_deep_supervision(False)
    example = torch.randn(2, *input_shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not isinstance(network(example), torch.Tensor):
            raise ValueError(f"{type(network).__name__} returns several outputs in eval mode; expected one tensor")
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter():
        torch.onnx.export(
            network, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=({0: batch},), verbose=False,
        )


def largest_difference(network: torch.nn.Module, path: Path, *, input_shape: Sequence[int]) -> tuple[float, float]:
    """(max |onnxruntime - torch|, max |torch|) of the logits for a random float32 batch of patches."""
    batch = torch.randn(VERIFICATION_BATCH, *input_shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.float().eval()(batch)
    exported = OnnxNetwork(path, input_name=INPUT_NAME, output_name=OUTPUT_NAME, threads=torch.get_num_threads())
    actual = exported(batch)
    if actual.shape != expected.shape:
        raise RuntimeError(f"{path}: onnxruntime returned shape {tuple(actual.shape)}, torch {tuple(expected.shape)}")
    return float((actual - expected).abs().max()), float(expected.abs().max())


def _export_configuration(
    predictor: Predictor, staging: Path, *, opset: int, exported: dict[str, ExportedConfiguration]
) -> None:
    """Export every fold of ``predictor`` (and of its previous stage) into ``staging``; record them in ``exported``."""
    if predictor.previous_stage is not None:
        _export_configuration(predictor.previous_stage, staging, opset=opset, exported=exported)
    name = predictor.configuration_name
    input_shape = (VERIFICATION_BATCH, network_input_channels(predictor), *predictor.configuration.patch_size)
    entry = exported.setdefault(name, ExportedConfiguration(
        patch_size=tuple(predictor.configuration.patch_size), step_size=predictor.options.step_size,
        mirror_axes=tuple(predictor.mirror_axes or ()), num_classes=predictor.dataset.num_output_channels,
        in_channels=input_shape[1], uses_regions=predictor.dataset.has_regions,
        previous_stage=predictor.previous_stage.configuration_name if predictor.previous_stage else None,
        configuration=predictor.configuration.to_json(), folds={},
    ))
    for fold, checkpoint_path, network in zip(
        predictor.trained_model.folds, predictor.trained_model.checkpoint_paths, predictor.networks, strict=True
    ):
        if fold in entry.folds:
            continue
        relative = Path(name) / f"fold_{fold}.onnx"
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        export_network(network, path, input_shape=input_shape, opset=opset)
        difference, scale = largest_difference(network, path, input_shape=input_shape)
        if difference > VERIFICATION_TOLERANCE * max(1.0, scale):
            raise RuntimeError(
                f"{checkpoint_path}: the ONNX graph differs from torch by {difference:.3g} (logits up to {scale:.3g}); "
                "not exported"
            )
        entry.folds[fold] = ExportedFold(
            file=relative.as_posix(), sha256=sha256_file(path),
            checkpoint=checkpoint_path.relative_to(predictor.trained_model.model_folder).as_posix(),
            max_abs_difference_to_torch=difference,
        )


def _empty_destination(output_folder: str | os.PathLike[str]) -> Path:
    """``output_folder`` resolved, refused unless it is new or an empty folder."""
    destination = Path(output_folder).expanduser().resolve()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise UserError(f"{destination}: already exists and is not empty; choose a new output folder or remove it.")
    return destination


def _fresh_staging_folder(destination: Path) -> Path:
    """``DESTINATION.partial``, created empty: the export is built there and renamed only when complete."""
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted export: never trusted, rebuilt from scratch
    staging.mkdir(parents=True)
    return staging


def _copy_records(source: Path, staging: Path, *, has_postprocessing: bool) -> str | None:
    """Copy the model folder's records prediction needs; returns the post-processing file's name (None if none)."""
    for name in COPIED_RECORDS:
        if (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    if not has_postprocessing:
        return None
    # load_ensemble read it from the file inference.json names; copy that same file.
    postprocessing_name = read_recipe_postprocessing(source)
    shutil.copyfile(source / postprocessing_name, staging / postprocessing_name)
    return postprocessing_name


def _onnx_recipe(
    models: ModelEnsemble, *, source: Path, checkpoint: str, opset: int, postprocessing_name: str | None,
    exported: dict[str, ExportedConfiguration],
) -> OnnxExport:
    """The record ``onnx_recipe.json``: how the graphs were made and what the sliding window needs."""
    return OnnxExport(
        autoseg_version=__version__, exporter=f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        opset=opset, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        input_layout="float32 (batch, channels, *patch_size); the batch axis is dynamic",
        output_layout="float32 (batch, num_classes, *patch_size) logits at full resolution",
        source_model_folder=str(source), checkpoint=checkpoint,
        models=tuple(RecipeModel(member.configuration_name, tuple(member.trained_model.folds))
                     for member in models.members),
        postprocessing=postprocessing_name, configurations=exported,
    )


def export_onnx_model(
    model_folder: str | os.PathLike[str],
    output_folder: str | os.PathLike[str],
    *,
    configuration: str | None = None,
    folds: Sequence[int | str] | str | None = None,
    checkpoint: str = "final",
    opset: int = ONNX_OPSET,
) -> OnnxExport:
    """Export what ``autoseg predict`` would run for these options into ``output_folder``; returns its record.

    Args:
        model_folder: ``WORK/<dataset>`` or an imported model folder.
        output_folder: a new or empty folder (an existing non-empty one is refused).
        configuration, folds, checkpoint: as for ``autoseg predict``; None follows ``inference.json``.
        opset: ONNX operator set of the graphs (at least 18, which onnxruntime supports since version 1.14).

    Raises:
        UserError: output folder not empty, a missing optional library, or a model-folder problem.
    """
    if opset < ONNX_OPSET:
        raise UserError(f"--opset {opset} is too old; torch's exporter builds graphs of opset {ONNX_OPSET} or newer.")
    destination = _empty_destination(output_folder)
    _require_export_libraries()
    models = load_ensemble(
        ModelSource.checkpoints(model_folder, configuration=configuration, folds=folds, checkpoint=checkpoint),
        PredictionOptions(device="cpu", precision="float32"),
    )
    source = models.members[0].trained_model.model_folder
    if destination == source or source in destination.parents:
        raise UserError(f"{destination}: must lie outside the model folder {source}.")
    staging = _fresh_staging_folder(destination)
    try:
        exported: dict[str, ExportedConfiguration] = {}
        for member in models.members:
            _export_configuration(member, staging, opset=opset, exported=exported)
        postprocessing_name = _copy_records(source, staging, has_postprocessing=models.postprocessing is not None)
        recipe = _onnx_recipe(
            models, source=source, checkpoint=checkpoint, opset=opset, postprocessing_name=postprocessing_name,
            exported=exported,
        )
        recipe.write(staging)
        if destination.exists():
            destination.rmdir()  # empty (checked above); os.replace cannot replace a directory on every platform
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return recipe


def read_recipe_postprocessing(model_folder: Path) -> str:
    """The post-processing file that ``inference.json`` names (the one ``load_ensemble`` applies)."""
    return str(InferenceRecipe.read(WorkFolder.at(model_folder).inference_recipe).postprocessing)
