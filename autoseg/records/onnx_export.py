"""The ``onnx_recipe.json`` record of an ``autoseg export-onnx`` folder: how its graphs were made and what they hold.

``autoseg export-onnx`` writes it last; ``autoseg predict --engine onnx`` reads it to find each fold's graph (checked
by its SHA-256), the configuration it was trained with and the recipe (members, folds, post-processing) to follow::

    {"format": "autoseg-onnx-1", "autoseg_version": ..., "exporter": ..., "opset": 18, "input_name": "image",
     "output_name": "logits", "input_layout": ..., "output_layout": ..., "source_model_folder": ...,
     "checkpoint": "final", "models": [{"configuration": "3d_fullres", "folds": ["0", "1"]}],
     "postprocessing": "postprocessing.json" | null,
     "configurations": {"3d_fullres": {"patch_size": [...], "step_size": 0.5, "mirror_axes": [...],
                                       "num_classes": 3, "in_channels": 1, "uses_regions": false,
                                       "previous_stage": null, "configuration": {...},
                                       "folds": {"0": {"file": "3d_fullres/fold_0.onnx", "sha256": ...,
                                                       "checkpoint": ..., "max_abs_difference_to_torch": ...}}}}}

Example (``OnnxExport.read(folder)`` reads the file of an exported folder):
    >>> export = OnnxExport.from_json({"input_name": "image", "output_name": "logits", "postprocessing": None,
    ...                                "models": [{"configuration": "3d_fullres", "folds": ["0", "1"]}]})
    >>> export.recipe.configurations, export.recipe.folds_of("3d_fullres"), export.to_json()["format"]
    (['3d_fullres'], ('0', '1'), 'autoseg-onnx-1')
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.utils.files import read_json, write_json

ONNX_RECIPE_FILE = "onnx_recipe.json"
ONNX_RECIPE_FORMAT = "autoseg-onnx-1"


@dataclasses.dataclass(frozen=True)
class ExportedFold:
    """One fold's ONNX graph: its file (relative to the export), SHA-256, source checkpoint and verification."""

    file: str
    sha256: str
    checkpoint: str
    max_abs_difference_to_torch: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportedFold:
        return cls(data["file"], data["sha256"], data.get("checkpoint", ""),
                   data.get("max_abs_difference_to_torch", 0.0))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "checkpoint": self.checkpoint,
                "max_abs_difference_to_torch": self.max_abs_difference_to_torch}


@dataclasses.dataclass(frozen=True)
class ExportedConfiguration:
    """One exported configuration: what the sliding window needs, the configuration trained, and its folds."""

    patch_size: tuple[int, ...]
    step_size: float
    mirror_axes: tuple[int, ...]
    num_classes: int
    in_channels: int
    uses_regions: bool
    previous_stage: str | None
    configuration: dict[str, Any]  # ``Configuration.to_json()`` of the configuration the folds were trained with
    folds: dict[str, ExportedFold]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportedConfiguration:
        return cls(
            patch_size=tuple(data.get("patch_size", ())), step_size=data.get("step_size", 0.5),
            mirror_axes=tuple(data.get("mirror_axes", ())), num_classes=data.get("num_classes", 0),
            in_channels=data.get("in_channels", 0), uses_regions=data.get("uses_regions", False),
            previous_stage=data.get("previous_stage"), configuration=data["configuration"],
            folds={str(name): ExportedFold.from_json(entry) for name, entry in data["folds"].items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "patch_size": list(self.patch_size), "step_size": self.step_size, "mirror_axes": list(self.mirror_axes),
            "num_classes": self.num_classes, "in_channels": self.in_channels, "uses_regions": self.uses_regions,
            "previous_stage": self.previous_stage, "configuration": self.configuration,
            "folds": {name: fold.to_json() for name, fold in self.folds.items()},
        }


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """The whole ``onnx_recipe.json``: provenance, graph interface, recipe and every exported configuration."""

    autoseg_version: str
    exporter: str
    opset: int
    input_name: str
    output_name: str
    input_layout: str
    output_layout: str
    source_model_folder: str
    checkpoint: str
    models: tuple[RecipeModel, ...]
    postprocessing: str | None
    configurations: dict[str, ExportedConfiguration]

    @property
    def recipe(self) -> InferenceRecipe:
        """The members, folds and post-processing file to follow, as ``inference.json`` states them."""
        return InferenceRecipe(models=self.models, checkpoint=self.checkpoint, postprocessing=self.postprocessing)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OnnxExport:
        models = tuple(
            RecipeModel(str(entry["configuration"]), tuple(entry["folds"]) if entry.get("folds") is not None else None)
            for entry in data["models"]
        )
        return cls(
            autoseg_version=data.get("autoseg_version", ""), exporter=data.get("exporter", ""),
            opset=data.get("opset", 0), input_name=data["input_name"], output_name=data["output_name"],
            input_layout=data.get("input_layout", ""), output_layout=data.get("output_layout", ""),
            source_model_folder=data.get("source_model_folder", ""), checkpoint=data.get("checkpoint", "final"),
            models=models, postprocessing=data.get("postprocessing"),
            configurations={name: ExportedConfiguration.from_json(entry)
                            for name, entry in data.get("configurations", {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ONNX_RECIPE_FORMAT, "autoseg_version": self.autoseg_version, "exporter": self.exporter,
            "opset": self.opset, "input_name": self.input_name, "output_name": self.output_name,
            "input_layout": self.input_layout, "output_layout": self.output_layout,
            "source_model_folder": self.source_model_folder, "checkpoint": self.checkpoint,
            "models": [{"configuration": model.configuration, "folds": list(model.folds or ())}
                       for model in self.models],
            "postprocessing": self.postprocessing,
            "configurations": {name: entry.to_json() for name, entry in self.configurations.items()},
        }

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> OnnxExport:
        """The record of the export ``folder``; a ``UserError`` when it is missing or not an autoseg ONNX recipe."""
        folder = Path(folder)
        path = folder / ONNX_RECIPE_FILE
        if not path.is_file():
            raise UserError(
                f"{folder}: holds no ONNX networks ({ONNX_RECIPE_FILE} missing); create them with "
                f"`autoseg export-onnx MODEL_FOLDER {folder}` or predict with --engine torch."
            )
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != ONNX_RECIPE_FORMAT or not data.get("models"):
            raise UserError(f"{path}: is not an autoseg ONNX recipe ({ONNX_RECIPE_FORMAT}); export the model again.")
        return cls.from_json(data)

    def write(self, folder: str | os.PathLike[str]) -> None:
        write_json(Path(folder) / ONNX_RECIPE_FILE, self.to_json())


def is_onnx_export(folder: str | os.PathLike[str]) -> bool:
    """True for a folder written by ``autoseg export-onnx`` (it holds ``onnx_recipe.json``)."""
    return (Path(folder).expanduser() / ONNX_RECIPE_FILE).is_file()
