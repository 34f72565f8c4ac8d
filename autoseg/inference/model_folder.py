"""Find the trained models of a model folder: configuration, folds and checkpoints to predict with.

A model folder is a dataset working folder ``WORK/<dataset>/`` (or an imported archive of one, same layout)::

    plans.json, dataset.json, [inference.json]
    models/CONFIG/fold_K/checkpoint_{final,best,latest}.pt      (K = 0..4 or "all")

``inference.json`` (written by model selection, optional) names the recommended ``{"models": [{"configuration":
..., "folds": [...]}]}``; the loader (``autoseg.inference.loading``) follows it and passes the configuration and
folds it chose; without a configuration, a folder with exactly one trained configuration needs no ``-c``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from autoseg.errors import UserError
from autoseg.inference.model_source import folds_to_load
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.work_folder import WorkFolder

CHECKPOINT_NAMES = ("final", "best", "latest")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """One configuration of a model folder and the checkpoint file of every fold to ensemble."""

    model_folder: Path
    configuration_name: str
    folds: tuple[str, ...]
    checkpoint_paths: tuple[Path, ...]


def _fold_name(fold: int | str) -> str:
    text = str(fold)
    if text != "all" and not text.isdigit():
        raise UserError(f"fold {fold!r} is not a fold number (0, 1, ...) or 'all'.")
    return text


def trained_configurations(model_folder: Path, *, checkpoint: str) -> list[str]:
    """Configurations with at least one fold holding ``checkpoint_<checkpoint>.pt``."""
    models = WorkFolder.at(model_folder).models
    if not models.is_dir():
        return []
    return sorted(
        entry.name for entry in models.iterdir()
        if entry.is_dir() and any(entry.glob(f"fold_*/checkpoint_{checkpoint}.pt"))
    )


def locate_trained_model(
    model_folder: str | os.PathLike[str],
    *,
    configuration: str | None = None,
    folds: Sequence[int | str] | str | None = None,
    checkpoint: str = "final",
    recipe: InferenceRecipe | None = None,
) -> TrainedModel:
    """Resolve the configuration, folds and checkpoint files to use; raise ``UserError`` naming what is missing.

    Args:
        configuration: e.g. ``3d_fullres``; None = the only trained one.
        folds: fold numbers and/or ``"all"``; None = the folds ``recipe`` names for the configuration, else every
            trained fold.
        checkpoint: ``final``, ``best`` or ``latest``.
        recipe: the folder's ``inference.json`` (None: there is none).
    """
    work_folder = WorkFolder.at(model_folder)
    model_folder = work_folder.root
    if checkpoint not in CHECKPOINT_NAMES:
        raise UserError(f"checkpoint {checkpoint!r} is not one of {', '.join(CHECKPOINT_NAMES)}.")
    if not work_folder.plans.is_file():
        raise UserError(
            f"{model_folder}: is not a model folder (no plans.json); pass WORK/<dataset> or an imported model."
        )
    available = trained_configurations(model_folder, checkpoint=checkpoint)
    if configuration is None:
        configuration = _only_trained_configuration(work_folder, available=available, checkpoint=checkpoint)
    configuration_folder = work_folder.configuration_models(configuration)
    folds = folds_to_load(recipe, configuration, folds)
    if folds is None:
        fold_names = _trained_fold_names(configuration_folder, checkpoint=checkpoint)
    else:
        fold_names = [_fold_name(fold) for fold in ([folds] if isinstance(folds, (str, int)) else folds)]
    if not fold_names:
        raise UserError(
            f"{configuration_folder}: has no fold with checkpoint_{checkpoint}.pt "
            f"(trained configurations: {', '.join(available) or 'none'})."
        )
    paths = tuple(work_folder.checkpoint(configuration, name, checkpoint) for name in fold_names)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: checkpoint not found (train that fold or choose other folds with -f).")
    return TrainedModel(model_folder, configuration, tuple(fold_names), paths)


def _only_trained_configuration(work_folder: WorkFolder, *, available: list[str], checkpoint: str) -> str:
    """The one trained configuration of a folder whose recipe names none; a ``UserError`` for none or several."""
    if len(available) == 1:
        return available[0]
    if not available:
        raise UserError(
            f"{work_folder}: has no trained model with checkpoint_{checkpoint}.pt under {work_folder.models}."
        )
    raise UserError(
        f"{work_folder}: holds several trained configurations ({', '.join(available)}); choose one with -c."
    )


def _trained_fold_names(configuration_folder: Path, *, checkpoint: str) -> list[str]:
    """Every fold holding the checkpoint, numbered folds first; ``all`` only when there is no numbered fold."""
    found = configuration_folder.glob(f"fold_*/checkpoint_{checkpoint}.pt")
    fold_names = sorted(
        (path.parent.name[len("fold_") :] for path in found),
        key=lambda name: (name == "all", int(name) if name.isdigit() else 0),
    )
    # A model trained on all cases and the cross-validation folds are alternatives, not an ensemble.
    if any(name.isdigit() for name in fold_names):
        fold_names = [name for name in fold_names if name != "all"]
    return fold_names
