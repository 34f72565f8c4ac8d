"""Load a predictor from the checkpoints of a model folder: the torch engine.

Each fold's checkpoint is loaded with ``weights_only=True`` into the network its configuration describes; the
configuration a checkpoint records must agree with ``plans.json`` on everything that shapes predictions. A cascade
stage loads its previous stage first; test-time adaptation loads every fold's adapter. Which configurations and
folds to load is decided by ``autoseg.inference.loading``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from autoseg.errors import UserError
from autoseg.inference.adaptation.adapter import ADAPTATION_METHODS, CaseAdaptation, load_fold_adapter
from autoseg.inference.model_folder import TrainedModel, locate_trained_model
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Predictor
from autoseg.networks import build_network
from autoseg.records.checkpoint import load_checkpoint, network_weights_of
from autoseg.records.dataset import RawDataset
from autoseg.records.inference_recipe import InferenceRecipe
from autoseg.records.plans import Configuration, Plans, load_plans
from autoseg.records.work_folder import WorkFolder

# Fields of a configuration that change what a trained network predicts; the others (batch size, memory estimate)
# may be edited in plans.json after training without consequence.
_PREDICTION_FIELDS = ("dimension", "spacing", "patch_size", "network", "normalization", "resampling")


def load_checkpoint_predictor(
    folder: WorkFolder,
    *,
    configuration: str | None,
    folds: Sequence[int | str] | str | None,
    checkpoint: str,
    recipe: InferenceRecipe | None,
    options: PredictionOptions,
) -> Predictor:
    """The predictor of one configuration (and of its previous cascade stage) from the checkpoints of ``folder``.

    Args:
        configuration: None = the only trained configuration.
        folds: None = the folds ``recipe`` names for the configuration, else every trained fold.
        recipe: the folder's ``inference.json`` (None: there is none).

    Raises:
        UserError: the folder, configuration, a fold or a checkpoint is missing or does not fit the plan.
    """
    trained = locate_trained_model(folder, configuration=configuration, folds=folds, checkpoint=checkpoint,
                                   recipe=recipe)
    folder = WorkFolder.at(trained.model_folder)
    plans, dataset = _read_plans_and_dataset(folder)
    device = options.torch_device()

    previous_stage = None
    plan_configuration = plans.configuration(trained.configuration_name)
    extra_channels = 0
    if plan_configuration.previous_stage:
        previous_stage = load_checkpoint_predictor(
            folder, configuration=plan_configuration.previous_stage, folds=folds, checkpoint=checkpoint,
            recipe=recipe, options=dataclasses.replace(options, adapt=None),
        )
        extra_channels = len(dataset.foreground_labels)

    networks, configuration_used = _load_fold_networks(
        trained, plan_configuration, in_channels=dataset.num_channels + extra_channels,
        out_channels=dataset.num_output_channels, device=device,
    )
    adaptation = (
        _load_adaptation(trained, configuration_used, dataset, options.adapt, seed=options.adaptation_seed)
        if options.adapt else None
    )
    return Predictor(
        configuration_name=trained.configuration_name, configuration=configuration_used, dataset=dataset,
        networks=networks, options=options, previous_stage=previous_stage, trained_model=trained,
        adaptation=adaptation,
    )


def _configuration_trained(path: Path, content: dict, planned: Configuration) -> Configuration:
    """The configuration a checkpoint records; it must agree with plans.json on everything that shapes predictions."""
    recorded = content.get("configuration")
    if not recorded:
        return planned
    trained = Configuration.from_json(
        planned.name, recorded,
        transpose_forward=planned.transpose_forward, transpose_backward=planned.transpose_backward,
    )
    changed = [field for field in _PREDICTION_FIELDS if getattr(trained, field) != getattr(planned, field)]
    if changed:
        raise UserError(
            f"{path}: was trained with other {', '.join(changed)} than plans.json states for {planned.name}; "
            "restore the plans it was trained with, or train it again."
        )
    return trained


def _read_plans_and_dataset(folder: WorkFolder) -> tuple[Plans, RawDataset]:
    """The model folder's ``plans.json`` and ``dataset.json``."""
    plans = load_plans(folder.plans)
    if not folder.dataset_json.is_file():
        raise UserError(f"{folder}: is not a model folder (no dataset.json).")
    return plans, folder.read_dataset()


def _load_fold_networks(
    trained: TrainedModel, plan_configuration: Configuration, *, in_channels: int, out_channels: int,
    device: torch.device,
) -> tuple[list[torch.nn.Module], Configuration]:
    """Every fold's network (on ``device``, in eval mode) and the configuration they were all trained with."""
    networks = []
    configuration_used = None
    for path in trained.checkpoint_paths:
        content = load_checkpoint(path)
        fold_configuration = _configuration_trained(path, content, plan_configuration)
        if configuration_used is not None and fold_configuration != configuration_used:
            raise UserError(
                f"{path}: was trained with a different configuration than {trained.checkpoint_paths[0]}; "
                "folds of one ensemble must share their plan."
            )
        configuration_used = fold_configuration
        network = _network_with_weights(
            configuration_used, content, path, in_channels=in_channels, out_channels=out_channels
        )
        networks.append(network.to(device).eval())
    return networks, configuration_used


def _network_with_weights(
    configuration: Configuration, checkpoint_content: dict, path: Path, *, in_channels: int, out_channels: int
) -> torch.nn.Module:
    """The configuration's network holding the checkpoint's weights; a mismatch names the checkpoint."""
    network = build_network(configuration, in_channels=in_channels, out_channels=out_channels, deep_supervision=True)
    try:
        network.load_state_dict(network_weights_of(checkpoint_content))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"{path}: does not fit the network of plans.json ({first_line}).") from None
    return network


def _load_adaptation(
    trained: TrainedModel, configuration: Configuration, dataset: RawDataset, method: str, *, seed: int
) -> CaseAdaptation:
    """Every fold's test-time adapter for ``method``; one sentence when a fold has none (see ``train-adapter``)."""
    if method not in ADAPTATION_METHODS:
        raise UserError(f"--adapt {method!r} is not one of {', '.join(ADAPTATION_METHODS)}.")
    if configuration.previous_stage:
        raise UserError(f"{trained.model_folder}: test-time adaptation does not support the cascade "
                        f"{trained.configuration_name}; choose another configuration with -c.")
    folder = WorkFolder.at(trained.model_folder)
    adapters = [
        load_fold_adapter(
            folder.adaptation(trained.configuration_name, fold), checkpoint_path=path, method=method,
            model_folder=folder.root, configuration=configuration, channels=dataset.num_channels,
            classes=dataset.num_output_channels,
        )
        for fold, path in zip(trained.folds, trained.checkpoint_paths, strict=True)
    ]
    return CaseAdaptation(method, adapters, configuration, dataset.num_channels, dataset.has_regions, seed=seed)
