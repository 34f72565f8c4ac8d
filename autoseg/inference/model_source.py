"""Where the networks come from: the checkpoints of a model folder, or the ONNX graphs of an ``export-onnx`` folder.

Both hold the same records (``dataset.json``, ``plans.json``, a recipe and its post-processing), so one loader
(``autoseg.inference.loading.load_ensemble``) applies the same rules to both; only the networks differ. The recipe's
rules (which members, which folds) are the two functions at the end of this module.

Example:
    >>> source = ModelSource.checkpoints("autoseg_work/Dataset004_Hippocampus", folds=(0, 1))
    >>> source.engine, source.configuration, source.folds, source.checkpoint
    ('torch', None, (0, 1), 'final')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from autoseg.records.inference_recipe import InferenceRecipe

Folds = Sequence[int | str] | str | None
ENGINES = ("torch", "onnx")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model folder and which of its models to load.

    Attributes:
        folder: ``WORK/<dataset>`` or an imported model folder (``torch``), or an ``export-onnx`` folder (``onnx``).
        engine: ``torch`` runs the checkpoints; ``onnx`` runs the exported graphs with onnxruntime.
        configuration: ``2d``, ``3d_fullres``, ...; None follows the recipe (else the only trained configuration).
        folds: fold numbers and/or ``"all"``; None = the recipe's folds, else every trained (exported) fold.
        checkpoint: ``final``, ``best`` or ``latest`` (torch only; an export holds the checkpoint it was made of).
        postprocessing: apply the post-processing the recipe chose (only when the recipe itself is followed).
    """

    folder: Path
    engine: str = "torch"
    configuration: str | None = None
    folds: Folds = None
    checkpoint: str = "final"
    postprocessing: bool = True

    @classmethod
    def checkpoints(
        cls,
        folder: str | os.PathLike[str],
        *,
        configuration: str | None = None,
        folds: Sequence[int | str] | str | None = None,
        checkpoint: str = "final",
        postprocessing: bool = True,
    ) -> ModelSource:
        """The trained checkpoints of a model (or working) folder, predicted with torch."""
        return cls(Path(folder), "torch", configuration, folds, checkpoint, postprocessing)

    @classmethod
    def onnx_export(
        cls,
        folder: str | os.PathLike[str],
        *,
        configuration: str | None = None,
        folds: Sequence[int | str] | str | None = None,
        postprocessing: bool = True,
    ) -> ModelSource:
        """The graphs of an ``autoseg export-onnx`` folder, predicted with onnxruntime."""
        return cls(Path(folder), "onnx", configuration, folds, "final", postprocessing)


def members_to_load(
    recipe: InferenceRecipe | None, configuration: str | None, folds: Folds
) -> list[tuple[str | None, Folds]]:
    """``(configuration, folds)`` of every member to load.

    Without a named configuration, every member of the recipe with its folds (folds asked for apply to every member);
    a named configuration overrides the recipe. Without either, ``(None, folds)``: the only trained configuration.
    """
    if configuration is None and recipe is not None:
        return [(model.configuration, folds if folds is not None else model.folds) for model in recipe.models]
    return [(configuration, folds)]


def folds_to_load(recipe: InferenceRecipe | None, configuration: str, folds: Folds) -> Folds:
    """The folds asked for, else the recipe's folds of ``configuration``; None = every trained (exported) fold."""
    if folds is None and recipe is not None:
        return recipe.folds_of(configuration)
    return folds
