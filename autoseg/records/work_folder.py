"""The working-folder layout, spelled once: every path an autoseg stage reads or writes for one dataset.

A dataset's working folder is ``WORK/<dataset folder name>/``; an exported model folder has the same layout::

    dataset.json            the raw dataset description (RawDataset)
    fingerprint.json        spacings, shapes, intensities and case signatures
    label_round_trip.json   the planner's label round trip, kept for a resumed plan
    plans.json              configurations (Plans)
    splits.json             cross-validation folds
    preprocessed/CONFIG/    training-ready cases
    ground_truth/           label maps in their original geometry, for validation
    models/CONFIG/fold_K/   checkpoints, training log, progress.png, validation/
    models/CONFIG/fold_K/adaptation/  test-time appearance adapter of the fold (``autoseg train-adapter``)
    models/CONFIG/crossval/ every fold's validation predictions together
    ensembles/NAME/crossval/ cross-validation predictions of an ensemble
    inference.json          the recipe model selection chose (InferenceRecipe)
    postprocessing.json     the post-processing decision (PostprocessingDecision)

Example:
    >>> work = WorkFolder(Path("autoseg_work/Dataset004_Hippocampus"))
    >>> work.fold("3d_fullres", 0).relative_to(work.root).as_posix()
    'models/3d_fullres/fold_0'
    >>> work.checkpoint("3d_fullres", "all", "final").name
    'checkpoint_final.pt'
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import Fingerprint
from autoseg.utils.files import read_json

DATASET_FILE = "dataset.json"
FINGERPRINT_FILE = "fingerprint.json"
LABEL_ROUND_TRIP_FILE = "label_round_trip.json"
PLANS_FILE = "plans.json"
SPLITS_FILE = "splits.json"
INFERENCE_RECIPE_FILE = "inference.json"
POSTPROCESSING_FILE = "postprocessing.json"
REPORT_FILE = "report.html"
VALIDATION_FOLDER = "validation"
ADAPTATION_FOLDER = "adaptation"
CROSSVAL_FOLDER = "crossval"
NEXT_STAGE_FOLDER = "next_stage"
TRAINING_SUMMARY_FILE = "training_summary.json"
WORK_DIR_ENVIRONMENT_VARIABLE = "AUTOSEG_WORK_DIR"
DEFAULT_WORK_DIR = "autoseg_work"


def resolve_work_dir(work_dir: str | os.PathLike[str] | None) -> Path:
    """The working folder chosen by the user, the environment, or the default, as an absolute path."""
    chosen = work_dir or os.environ.get(WORK_DIR_ENVIRONMENT_VARIABLE) or DEFAULT_WORK_DIR
    return Path(chosen).expanduser().resolve()


@dataclasses.dataclass(frozen=True)
class WorkFolder:
    """One dataset's working folder (or a model folder with the same layout) and every path inside it."""

    root: Path

    @classmethod
    def for_dataset(cls, work_dir: str | os.PathLike[str] | None, dataset_root: str | os.PathLike[str]) -> WorkFolder:
        """``WORK/<dataset folder name>``; WORK is ``--work-dir``, ``$AUTOSEG_WORK_DIR`` or ``./autoseg_work``."""
        return cls(resolve_work_dir(work_dir) / Path(dataset_root).resolve().name)

    @classmethod
    def at(cls, folder: str | os.PathLike[str]) -> WorkFolder:
        """An existing working or model folder given by its path."""
        return cls(Path(folder).expanduser().resolve())

    def __fspath__(self) -> str:
        """The folder itself, for code that only needs a path (locks, messages, ``Path(work_folder)``)."""
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def dataset_json(self) -> Path:
        return self.root / DATASET_FILE

    def read_dataset(self) -> RawDataset:
        """The raw dataset description this working folder was made for (``dataset.json``)."""
        return RawDataset.from_dict(read_json(self.dataset_json))

    @property
    def fingerprint(self) -> Path:
        return self.root / FINGERPRINT_FILE

    def read_fingerprint(self) -> Fingerprint | None:
        """The dataset's ``fingerprint.json`` (None when it has not been fingerprinted here)."""
        if not self.fingerprint.is_file():
            return None
        return Fingerprint.from_json(read_json(self.fingerprint), source=str(self.fingerprint))

    @property
    def label_round_trip(self) -> Path:
        return self.root / LABEL_ROUND_TRIP_FILE

    @property
    def plans(self) -> Path:
        return self.root / PLANS_FILE

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_FILE

    @property
    def ground_truth(self) -> Path:
        return self.root / "ground_truth"

    @property
    def inference_recipe(self) -> Path:
        return self.root / INFERENCE_RECIPE_FILE

    @property
    def postprocessing(self) -> Path:
        return self.root / POSTPROCESSING_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def preprocessed_root(self) -> Path:
        return self.root / "preprocessed"

    def preprocessed(self, data_configuration: str) -> Path:
        """Training-ready cases of a configuration (a cascade's full-resolution stage shares its parent's data)."""
        return self.preprocessed_root / data_configuration

    def configuration_models(self, configuration: str) -> Path:
        return self.models / configuration

    def fold(self, configuration: str, fold: int | str) -> Path:
        return self.models / configuration / f"fold_{fold}"

    def checkpoint(self, configuration: str, fold: int | str, which: str) -> Path:
        """``which`` is ``final``, ``best`` or ``latest``."""
        return self.fold(configuration, fold) / f"checkpoint_{which}.pt"

    def adaptation(self, configuration: str, fold: int | str) -> Path:
        """The fold's test-time appearance adapter: ``adaptation.json`` (written last) and its state dicts."""
        return self.fold(configuration, fold) / ADAPTATION_FOLDER

    def validation(self, configuration: str, fold: int | str) -> Path:
        return self.fold(configuration, fold) / VALIDATION_FOLDER

    def crossval(self, configuration: str) -> Path:
        return self.models / configuration / CROSSVAL_FOLDER

    def next_stage(self, previous_stage: str, configuration: str) -> Path:
        """Where a cascade's low-resolution stage writes its predictions for the next stage's training."""
        return self.models / previous_stage / NEXT_STAGE_FOLDER / configuration

    def ensemble_crossval(self, name: str) -> Path:
        return self.root / "ensembles" / name / CROSSVAL_FOLDER

    def progress_plots(self) -> list[Path]:
        return sorted(self.models.glob("*/fold_*/progress.png"))

    def training_summaries(self) -> list[Path]:
        return sorted(self.models.glob(f"*/fold_*/{TRAINING_SUMMARY_FILE}"))

    def trained_folds(self, configuration: str, which: str) -> list[Path]:
        """Fold folders of ``configuration`` holding ``checkpoint_<which>.pt``."""
        return sorted(path.parent for path in self.models.glob(f"{configuration}/fold_*/checkpoint_{which}.pt"))
