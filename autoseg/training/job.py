"""What one ``autoseg train`` needs, located and checked: the ``TrainingJob`` for one fold of one configuration."""

from __future__ import annotations

from pathlib import Path

from autoseg.errors import UserError
from autoseg.records.case_signatures import require_unchanged_since_planning
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.training.loop import TrainingJob
from autoseg.training.splits import CASE_GROUPERS, DEFAULT_SPLIT_SEED, cases_for_fold, load_or_create_splits

FOLD_CHOICES = ("0", "1", "2", "3", "4", "all")


def build_job(
    work_folder: WorkFolder,
    configuration_name: str,
    fold: int | str,
    *,
    raw_dataset: RawDataset | None = None,
    dataset: RawDataset | None = None,
    splits_file: str | None = None,
    group_cases: str = "none",
    write_splits: bool = True,
) -> TrainingJob:
    """Locate everything training needs and check it exists, naming the command that makes what is missing.

    ``raw_dataset``, the raw folder as it is now, is compared with what was planned (changed cases are an error);
    ``dataset`` saves re-reading the working folder's ``dataset.json`` when the caller holds it already.
    """
    fold = str(fold)
    if fold not in FOLD_CHOICES and not (splits_file and fold.isdigit()):
        raise UserError(f"fold {fold!r} is not one of {', '.join(FOLD_CHOICES)}.")
    name = raw_dataset.root if raw_dataset is not None else work_folder.root.name
    dataset = dataset or _planned_dataset(work_folder, name)
    if raw_dataset is not None:
        require_unchanged_since_planning(
            work_folder, raw_dataset,
            how_to_proceed=f"run `autoseg plan {name}` and `autoseg preprocess {name}` again first.",
        )
    plans = load_plans(work_folder.plans)
    configuration = plans.configuration(configuration_name)
    preprocessed_folder = _preprocessed_folder(work_folder.preprocessed(plans.data_configuration(configuration_name)),
                                               configuration_name, name)
    case_ids = sorted(case.identifier for case in dataset.training_cases) or _case_ids_in(preprocessed_folder)
    splits = load_or_create_splits(
        work_folder.splits, case_ids, user_splits_file=splits_file, seed=DEFAULT_SPLIT_SEED,
        grouper=CASE_GROUPERS[group_cases], write=write_splits,
    )
    train_ids, validation_ids = cases_for_fold(splits, fold, case_ids)
    _require_preprocessed(preprocessed_folder, train_ids + validation_ids, fold, configuration_name, name)
    return TrainingJob(
        dataset=dataset, work_folder=work_folder, configuration_name=configuration_name, configuration=configuration,
        fold=fold if fold == "all" else int(fold), train_case_ids=tuple(train_ids),
        validation_case_ids=tuple(validation_ids), preprocessed_folder=preprocessed_folder,
        fold_folder=work_folder.fold(configuration_name, fold),
        previous_stage_folder=(
            work_folder.next_stage(configuration.previous_stage, configuration_name)
            if configuration.previous_stage else None
        ),
        splits=tuple(splits),
    )


def _planned_dataset(work_folder: WorkFolder, name: str) -> RawDataset:
    for path in (work_folder.dataset_json, work_folder.plans):
        if not path.is_file():
            raise UserError(
                f"{path} does not exist; run `autoseg plan {name}` and `autoseg preprocess {name}` "
                "(with the same --work-dir) first."
            )
    return work_folder.read_dataset()


def _case_ids_in(preprocessed_folder: Path) -> list[str]:
    return sorted(path.stem for path in preprocessed_folder.glob("*.json"))


def _preprocessed_folder(folder: Path, configuration_name: str, name: str) -> Path:
    """A cascade stage trains on its parent's preprocessed data (plus the previous stage's predictions)."""
    if not _case_ids_in(folder):
        raise UserError(
            f"{folder} holds no preprocessed cases; run `autoseg preprocess {name} -c {configuration_name}` "
            "(with the same --work-dir) first."
        )
    return folder


def _require_preprocessed(folder: Path, case_ids: list[str], fold: str, configuration_name: str, name: str) -> None:
    missing = sorted(set(case_ids) - set(_case_ids_in(folder)))
    if missing:
        raise UserError(
            f"{folder} lacks {len(missing)} case(s) of fold {fold} (e.g. {missing[0]}); "
            f"run `autoseg preprocess {name} -c {configuration_name}` again to complete it."
        )
