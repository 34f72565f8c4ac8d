"""The one model loader: the recipe's rules applied once, for checkpoints and ONNX exports alike.

A model folder's ``inference.json`` (or an export's ``onnx_recipe.json``, which carries the same recipe) names the
members to ensemble and their folds, and the post-processing chosen on the cross-validation of that choice. Without
a named configuration every member of the recipe is loaded with its folds; naming one overrides the recipe, and the
post-processing then applies only when the recipe chose exactly that configuration (``members_to_load``,
``folds_to_load``). Only the networks differ between engines: ``torch_engine`` loads checkpoints, ``onnx_engine``
onnxruntime sessions.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus``):
    >>> models = load_ensemble(ModelSource.checkpoints(model_folder), PredictionOptions(device="cpu"))
    >>> [member.configuration_name for member in models.members], models.postprocessing is not None
    (['3d_fullres'], True)
    >>> load_predictor(ModelSource.checkpoints(model_folder, folds=(0,)), PredictionOptions()).trained_model.folds
    ('0',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from autoseg.errors import UserError
from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.model_source import ENGINES, Folds, ModelSource, members_to_load
from autoseg.inference.onnx_engine import OnnxModels, import_onnxruntime, load_onnx_predictor
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.inference.torch_engine import load_checkpoint_predictor
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.onnx_export import OnnxExport
from autoseg.records.plans import load_plans
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.work_folder import WorkFolder


@dataclasses.dataclass(frozen=True)
class _OpenedSource:
    """A model source's folder, its recipe (None: none) and how to load one of its configurations."""

    root: Path
    recipe: InferenceRecipe | None
    load: Callable[[str | None, Folds], Predictor]


def load_ensemble(source: ModelSource, options: PredictionOptions = PredictionOptions()) -> ModelEnsemble:  # noqa: B008
    """What ``autoseg predict`` runs: the recipe's members (or the configuration named) and its post-processing.

    Raises:
        UserError: the folder is not a model (or export) folder, a configuration, fold or checkpoint is missing, or
            onnxruntime is not installed for an ONNX export.
    """
    opened = _open(source, options)
    members = [opened.load(configuration, folds)
               for configuration, folds in members_to_load(opened.recipe, source.configuration, source.folds)]
    recipe = opened.recipe
    postprocessing = None
    follows_recipe = recipe is not None and [member.configuration_name for member in members] == recipe.configurations
    if source.postprocessing and follows_recipe and recipe.postprocessing:
        postprocessing = PostprocessingDecision.read(opened.root / recipe.postprocessing)
    quality = recipe.quality if recipe is not None else None
    if quality is not None and not follows_recipe:
        # The calibration belongs to the recipe's members; other members keep the volume ranges only.
        quality = dataclasses.replace(quality, raw_scores=(), expected=(), flag_below=None)
    return ModelEnsemble(members=members, postprocessing=postprocessing, quality=quality)


def load_predictor(source: ModelSource, options: PredictionOptions = PredictionOptions()) -> Predictor:  # noqa: B008
    """One configuration: the one named, else the recipe's first member, else the only trained one."""
    opened = _open(source, options)
    configuration, folds = members_to_load(opened.recipe, source.configuration, source.folds)[0]
    return opened.load(configuration, folds)


def _open(source: ModelSource, options: PredictionOptions) -> _OpenedSource:
    if source.engine == "onnx":
        return _open_onnx_export(source, options)
    if source.engine != "torch":
        raise UserError(f"engine {source.engine!r} is not one of {', '.join(ENGINES)}.")
    folder = WorkFolder.at(source.folder)
    recipe = InferenceRecipe.read(folder.inference_recipe) if folder.plans.is_file() else None

    def load(configuration: str | None, folds: Folds) -> Predictor:
        return load_checkpoint_predictor(folder, configuration=configuration, folds=folds,
                                         checkpoint=source.checkpoint, recipe=recipe, options=options)

    return _OpenedSource(folder.root, recipe, load)


def _open_onnx_export(source: ModelSource, options: PredictionOptions) -> _OpenedSource:
    folder = Path(source.folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder does not exist.")
    export = OnnxExport.read(folder)
    import_onnxruntime()
    work_folder = WorkFolder.at(folder)
    models = OnnxModels(folder, export, load_plans(work_folder.plans), work_folder.read_dataset())
    copied = InferenceRecipe.read(work_folder.inference_recipe)  # the export copies inference.json: its quality model
    recipe = dataclasses.replace(export.recipe, quality=copied.quality if copied is not None else None)

    def load(configuration: str | None, folds: Folds) -> Predictor:
        name = configuration if configuration is not None else export.recipe.configurations[0]
        return load_onnx_predictor(models, name, folds=folds, options=options)

    return _OpenedSource(folder, recipe, load)
