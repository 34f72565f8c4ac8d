"""The ``inference.json`` record: which configurations and folds ``autoseg predict`` uses, as model selection chose.

Example:
    >>> recipe = InferenceRecipe.from_json({"models": [{"configuration": "3d_fullres", "folds": [0, 1]}]})
    >>> recipe.models[0].configuration, recipe.models[0].folds, recipe.configurations
    ('3d_fullres', (0, 1), ['3d_fullres'])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.json_record import JsonRecord
from autoseg.records.quality_model import QualityModel
from autoseg.utils.files import read_json, write_json


@dataclasses.dataclass(frozen=True)
class RecipeCandidate(JsonRecord):
    """One configuration or ensemble model selection compared: its cross-validation folder (relative to the working
    folder) and scores; ``foreground_dice`` is None when no case had foreground."""

    name: str = ""
    folder: str = ""
    foreground_dice: float | None = None
    dice_per_class: dict[str, float | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RecipeModel:
    """One member: a configuration and the folds whose checkpoints are ensembled (None: every trained fold)."""

    configuration: str
    folds: tuple[int | str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class InferenceRecipe:
    """The chosen members, post-processing file and the cross-validation evidence behind the choice."""

    models: tuple[RecipeModel, ...]
    selected: str | None = None
    checkpoint: str = "final"
    postprocessing: str | None = None
    cross_validation_dice: float | None = None
    cross_validation_dice_after_postprocessing: float | None = None
    candidates: tuple[RecipeCandidate, ...] = ()
    quality: QualityModel | None = None

    @classmethod
    def from_json(cls, data: Any, *, source: str = "inference recipe") -> InferenceRecipe:
        if not isinstance(data, dict) or not data.get("models"):
            raise UserError(f"{source}: must hold {{'models': [{{'configuration': ..., 'folds': [...]}}]}}.")
        models = tuple(
            RecipeModel(str(entry["configuration"]), tuple(entry["folds"]) if entry.get("folds") is not None else None)
            for entry in data["models"]
        )
        return cls(
            models=models, selected=data.get("selected"), checkpoint=data.get("checkpoint", "final"),
            postprocessing=data.get("postprocessing"), cross_validation_dice=data.get("cross_validation_dice"),
            cross_validation_dice_after_postprocessing=data.get("cross_validation_dice_after_postprocessing"),
            candidates=_candidates(data.get("candidates", ()), source),
            quality=QualityModel.from_json(data["quality"]) if isinstance(data.get("quality"), dict) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "models": [{"configuration": model.configuration, "folds": list(model.folds or ())}
                       for model in self.models],
            "ensemble": self.ensemble,
            "checkpoint": self.checkpoint,
            "postprocessing": self.postprocessing,
            "cross_validation_dice": self.cross_validation_dice,
            "cross_validation_dice_after_postprocessing": self.cross_validation_dice_after_postprocessing,
            "candidates": [candidate.to_json() for candidate in self.candidates],
            **({"quality": self.quality.to_json()} if self.quality is not None else {}),
        }

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> InferenceRecipe | None:
        """The recipe at ``path``, or None when there is none (a folder model selection has not run on)."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = read_json(path)
        except ValueError:
            raise UserError(f"{path}: is not valid JSON; run `autoseg find-best` again.") from None
        return cls.from_json(data, source=str(path))

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_json())

    @property
    def ensemble(self) -> bool:
        return len(self.models) > 1

    @property
    def configurations(self) -> list[str]:
        return [model.configuration for model in self.models]

    def folds_of(self, configuration: str) -> tuple[int | str, ...] | None:
        return next((model.folds for model in self.models if model.configuration == configuration), None)

    def candidate(self, name: str) -> RecipeCandidate:
        """The candidate called ``name`` (``recipe.candidate(recipe.selected)`` is the winner)."""
        return next(candidate for candidate in self.candidates if candidate.name == name)

    @property
    def all_folds(self) -> list[int | str]:
        return sorted({fold for model in self.models for fold in (model.folds or ())}, key=str)


def _candidates(entries: Any, source: str) -> tuple[RecipeCandidate, ...]:
    if not isinstance(entries, list | tuple) or not all(isinstance(entry, dict) for entry in entries):
        raise UserError(f"{source}: 'candidates' must be a list of {{'name': ..., 'folder': ...}} entries.")
    return tuple(RecipeCandidate.from_json(entry) for entry in entries)
