"""What `autoseg predict` runs: the model-selection recipe (one configuration or an ensemble) plus post-processing.

``inference.json`` (written by model selection) names the chosen configurations and folds; an ensemble averages
its members' probabilities in the input's grid. ``postprocessing.json`` (keep-largest-component decisions made on
the cross-validation of that same choice) is applied to the label maps. Naming a configuration overrides the recipe;
its post-processing then applies only when the recipe chose exactly that configuration.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus``; its ``inference.json`` chose folds 0 and 1 of
``3d_fullres``, with post-processing):
    >>> models = ModelEnsemble.from_model_folder(model_folder, device="cpu", tta=False)
    >>> models.description
    '3d_fullres (folds 0, 1), post-processed'
    >>> written = models.predict_files([[image_path]], ["out/hippocampus_001.nii.gz"], progress=False)
    >>> [str(path) for path in written]
    ['out/hippocampus_001.nii.gz']
    >>> from autoseg.io.images import read_image
    >>> read_image(written[0]).geometry == read_image(image_path).geometry  # the input's grid, exactly
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from autoseg.inference.pipeline import run_prediction_pipeline
from autoseg.inference.predictor import Predictor
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.work_folder import WorkFolder


@dataclasses.dataclass
class ModelEnsemble:
    """Predictors of one dataset whose probabilities are averaged, and the post-processing applied afterwards."""

    members: list[Predictor]
    postprocessing: PostprocessingDecision | None = None

    @property
    def description(self) -> str:
        parts = []
        for member in self.members:
            folds = ", ".join(member.trained_model.folds) if member.trained_model else "?"
            parts.append(f"{member.configuration_name} (folds {folds})")
        return " + ".join(parts) + (", post-processed" if self.postprocessing else "")

    @classmethod
    def from_model_folder(
        cls,
        model_folder: str | os.PathLike[str],
        *,
        configuration: str | None = None,
        folds: Sequence[int | str] | str | None = None,
        checkpoint: str = "final",
        device: str | torch.device = "auto",
        tta: bool = True,
        step_size: float = 0.5,
        batch_size: int = 2,
        precision: str = "auto",
        use_postprocessing: bool = True,
        adapt: str | None = None,
    ) -> ModelEnsemble:
        """Follow ``inference.json`` when no configuration is named; see ``Predictor.from_model_folder``.

        ``folds`` given by the user apply to every member; otherwise each member uses the recipe's folds.
        ``adapt`` names a test-time appearance adaptation method for every member (docs/adaptation.md).
        """
        folder = WorkFolder.at(model_folder)
        options = {"checkpoint": checkpoint, "device": device, "tta": tta, "step_size": step_size,
                   "batch_size": batch_size, "precision": precision, "adapt": adapt}
        recipe = InferenceRecipe.read(folder.inference_recipe) if folder.plans.is_file() else None
        recipe_configurations = recipe.configurations if recipe else []
        if configuration is None and recipe is not None:
            members = [
                Predictor.from_model_folder(
                    folder, configuration=model.configuration, folds=folds if folds is not None else model.folds,
                    **options,
                )
                for model in recipe.models
            ]
        else:
            members = [Predictor.from_model_folder(folder, configuration=configuration, folds=folds, **options)]
        chosen = [member.configuration_name for member in members]
        postprocessing = None
        follows_recipe = recipe is not None and chosen == recipe_configurations
        if use_postprocessing and follows_recipe and recipe.postprocessing:
            postprocessing = PostprocessingDecision.read(folder.root / recipe.postprocessing)
        return cls(members=members, postprocessing=postprocessing)

    def predict_files(
        self,
        cases: Sequence[Sequence[str | os.PathLike[str]]],
        output_paths: Sequence[str | os.PathLike[str]],
        *,
        save_probabilities: bool = False,
        skip_existing: bool = False,
        workers: int = 0,
        progress: bool = True,
    ) -> list[Path]:
        """Segment each case (a list of channel files) into its output path; see ``Predictor.predict_files``."""

        return run_prediction_pipeline(
            self.members, list(zip(cases, output_paths, strict=True)), save_probabilities=save_probabilities,
            postprocessing=self.postprocessing, skip_existing=skip_existing, workers=workers, progress=progress,
        )
