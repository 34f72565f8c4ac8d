"""Record a fold's test-time adapter: all methods for ``autoseg train-adapter``, ``standardise`` after a run's folds.

``predict --adapt standardise`` (the default method) needs no trained part, only what the model predicts on its
training images (the plausibility ranges) and their intensity landmarks. ``autoseg run`` records both for the folds
of the model it selected (``standardisation_stage``), from ``RUN_STANDARDISATION_CASES`` training cases each, when
its budget has the time left, so a model from a run accepts ``predict --adapt`` as it is; ``autoseg train-adapter``
records the same and trains the parts of the other methods (docs/adaptation.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autoseg.errors import UserError
from autoseg.inference.adaptation import train_fold_adapter
from autoseg.inference.adaptation.adapter import ADAPTATION_FILE, AdapterTrainingSettings, collect_source_windows
from autoseg.inference.loading import load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.pipeline.budget import RunBudget
from autoseg.records.checkpoint import recorded_checkpoint_sha256
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.plans import load_plans
from autoseg.records.splits import read_splits
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.durations import describe_duration
from autoseg.utils.files import sha256_file

# The sample ``docs/adaptation.md`` measured standardisation with (``train-adapter --max-cases 32``). Each case is
# one sliding-window prediction, a fraction of what predicting the fold's validation cases costs.
RUN_STANDARDISATION_CASES = 32
RUN_STANDARDISATION = AdapterTrainingSettings(max_cases=RUN_STANDARDISATION_CASES, methods=("standardise",))


def fold_training_cases(work: WorkFolder, predictor: Predictor, fold: str) -> list[tuple[tuple[str, ...], str]]:
    """``(image paths, label path)`` of the cases fold ``fold`` was trained on (every case for fold ``all``)."""
    dataset = predictor.dataset
    if fold == "all":
        identifiers = [case.identifier for case in dataset.training_cases]
    else:
        splits = read_splits(work.splits, known_case_ids=[case.identifier for case in dataset.training_cases])
        if int(fold) >= len(splits):
            raise UserError(f"{work.splits}: has no fold {fold}.")
        identifiers = splits[int(fold)]["train"]
    cases = [dataset.case(identifier) for identifier in identifiers]
    return [(tuple(case.images), case.label) for case in cases if case.label is not None]


def record_fold_adapter(
    work: WorkFolder, predictor: Predictor, index: int, fold: str, settings: AdapterTrainingSettings
) -> tuple[dict, Path]:
    """Learn the adapter of the predictor's fold ``index`` (named ``fold``) from that fold's training cases and
    write it to ``models/CONFIG/fold_K/adaptation/``; returns ``adaptation.json`` and that folder."""
    network = predictor.networks[index]
    cases = fold_training_cases(work, predictor, fold)
    if not cases:
        raise UserError(f"{work.dataset_json}: fold {fold} has no labelled training case to learn from.")
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    source = collect_source_windows(
        cases, configuration=predictor.configuration, dataset=predictor.dataset,
        predict=lambda data: predictor.network_probabilities(network, torch.as_tensor(data)), settings=settings,
        generator=generator,
    )
    folder = work.adaptation(predictor.configuration_name, fold)
    record = train_fold_adapter(
        network, source, folder, checkpoint_path=predictor.trained_model.checkpoint_paths[index],
        configuration=predictor.configuration, dataset=predictor.dataset, settings=settings, generator=generator,
    )
    return record, folder


def record_standardisation(
    *, work_folder: WorkFolder, configuration_name: str, fold: int | str, device: str, precision: str = "auto",
) -> dict[str, Any]:
    """Record what ``predict --adapt standardise`` needs for the fold's final checkpoint.

    Predicts ``RUN_STANDARDISATION_CASES`` of the fold's training cases as ``predict`` does (mirroring on). A
    cascade is skipped: test-time adaptation does not support it.
    """
    if load_plans(work_folder.plans).configuration(configuration_name).previous_stage:
        return {"skipped": f"test-time adaptation does not support the cascade {configuration_name}"}
    started = time.perf_counter()
    predictor = load_predictor(
        ModelSource.checkpoints(work_folder, configuration=configuration_name, folds=[fold], checkpoint="final"),
        PredictionOptions(device=device, precision=precision),
    )
    record, folder = record_fold_adapter(work_folder, predictor, 0, str(fold), RUN_STANDARDISATION)
    return {"folder": str(folder), "cases": record["source_ranges"]["images"], "methods": list(record["methods"]),
            "seconds": round(time.perf_counter() - started, 1)}


def _folds_to_record(work: WorkFolder, recipe: InferenceRecipe) -> list[tuple[str, str]]:
    """``(configuration, fold)`` of the selected model whose final checkpoint has no standardisation record yet
    (folds None: every trained fold); a record made for an earlier checkpoint of a retrained fold does not count."""
    pairs = []
    for model in recipe.models:
        folds = ([str(fold) for fold in model.folds] if model.folds else
                 [path.name.removeprefix("fold_") for path in work.trained_folds(model.configuration, "final")])
        for fold in folds:
            record = work.adaptation(model.configuration, fold) / ADAPTATION_FILE
            checkpoint = work.checkpoint(model.configuration, fold, "final")
            if not (record.is_file() and recorded_checkpoint_sha256(record) == sha256_file(checkpoint)):
                pairs.append((model.configuration, fold))
    return pairs


def standardisation_stage(
    work: WorkFolder, recipe: InferenceRecipe, *, device: str, precision: str, budget: RunBudget,
    case_seconds: Callable[[str], float | None],
) -> None:
    """Record ``standardise`` for the selected model's folds that lack it, when the budget ``affords`` its
    predictions (``case_seconds``: per configuration, the seconds of one case; the estimate counts network passes
    only, not reading and preprocessing the cases); otherwise, or when recording fails, say how to record it later.
    Never raises: the run's model and report do not depend on it."""
    folds = _folds_to_record(work, recipe)
    if not folds:
        return
    later = f"`autoseg train-adapter {work.root}` records it later, then `predict --adapt` works"
    training_cases = len(read_splits(work.splits)[0]["train"]) if work.splits.is_file() else RUN_STANDARDISATION_CASES
    cases = min(RUN_STANDARDISATION_CASES, training_cases)
    estimates = [case_seconds(configuration) for configuration, _ in folds]
    needed = None if None in estimates else cases * sum(estimates)
    if not budget.affords(needed):
        cost = "of unknown cost" if needed is None else f"about {describe_duration(needed)}"
        print(f"not recording test-time standardisation ({len(folds)} fold(s) x {cases} training cases, {cost}): the "
              f"budget has {describe_duration(float(budget.seconds_left or 0.0))} left; {later}")
        return
    for configuration, fold in folds:
        try:
            outcome = record_standardisation(work_folder=work, configuration_name=configuration, fold=fold,
                                             device=device, precision=precision)
        except (UserError, OSError) as error:
            print(f"test-time standardisation of {configuration} fold {fold} not recorded ({error}); {later}")
            continue
        done = outcome["skipped"] if "skipped" in outcome else f"{outcome['cases']} cases in {outcome['seconds']} s"
        print(f"test-time standardisation of {configuration} fold {fold}: {done}", flush=True)
