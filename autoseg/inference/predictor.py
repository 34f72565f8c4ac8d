"""The predictor: a trained model folder turned into a function from images (files or arrays) to label maps.

For each case: preprocess exactly as in training (``autoseg.transforms.case.preprocess_case``), predict
logits with the sliding window for every fold, average the logits over folds (as the reference does), convert
them to probabilities (softmax, or sigmoid for regions), then resample back to the input's grid and take the label map
(``autoseg.inference.export``). A ``3d_cascade_fullres`` predictor first runs its ``3d_lowres`` predictor on the
same case and feeds that segmentation as extra one-hot input channels.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus`` with two folds of a small ``3d_fullres`` model):
    >>> predictor = Predictor.from_model_folder(model_folder, folds=(0, 1), device="cpu", tta=False)
    >>> predictor.configuration_name, predictor.trained_model.folds
    ('3d_fullres', ('0', '1'))
    >>> image.shape
    (35, 51, 35)
    >>> prediction = predictor.predict_array(image, spacing=(1.0, 1.0, 1.0), return_probabilities=True)
    >>> prediction.label_map.shape == image.shape, prediction.label_map.dtype
    (True, dtype('uint8'))
    >>> prediction.probabilities.shape  # (K, z, y, x) in the image's grid, averaged over both folds
    (3, 35, 51, 35)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.inference.adaptation.adapter import ADAPTATION_METHODS, CaseAdaptation, load_fold_adapter
from autoseg.inference.case_input import PreprocessedCase, preprocess_for_prediction
from autoseg.inference.export import export_case, probabilities_in_input_grid
from autoseg.inference.label_maps import (
    label_map_from_probabilities,
    previous_stage_channels,
    probabilities_from_logits,
)
from autoseg.inference.model_folder import TrainedModel, locate_trained_model
from autoseg.inference.pipeline import run_prediction_pipeline
from autoseg.inference.sliding_window import predict_sliding_window
from autoseg.io.images import Geometry, write_image
from autoseg.networks import build_network
from autoseg.records.checkpoint import load_checkpoint, network_weights_of
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration, Plans, load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.devices import choose_device


@dataclasses.dataclass
class Prediction:
    """A label map in the input's grid ``(z, y, x)`` and, when asked for, the class probabilities ``(K, z, y, x)``."""

    label_map: np.ndarray
    probabilities: np.ndarray | None = None


# Fields of a configuration that change what a trained network predicts; the others (batch size, memory estimate)
# may be edited in plans.json after training without consequence.
_PREDICTION_FIELDS = ("dimension", "spacing", "patch_size", "network", "normalization", "resampling")


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
    trained: TrainedModel, configuration: Configuration, dataset: RawDataset, method: str
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
    return CaseAdaptation(method, adapters, configuration, dataset.num_channels, dataset.has_regions)


class Predictor:
    """Segments images with an ensemble of trained folds of one configuration.

    Build it with ``Predictor.from_model_folder``. Options:
        tta: test-time mirroring over every spatial axis (8 passes per patch in 3D, 4 in 2D).
        step_size: sliding-window step as a fraction of the patch (0.5 = half-patch overlap).
        batch_size: patches per forward pass.
        precision: ``auto`` (float16 autocast on CUDA, bfloat16 on CPUs with native bfloat16, else float32),
            ``float32``, ``float16``, ``bfloat16``.
    """

    def __init__(
        self,
        *,
        configuration_name: str,
        configuration: Configuration,
        dataset: RawDataset,
        networks: Sequence[torch.nn.Module],
        device: torch.device,
        tta: bool = True,
        step_size: float = 0.5,
        batch_size: int = 2,
        precision: str = "auto",
        previous_stage: Predictor | None = None,
        trained_model: TrainedModel | None = None,
        adaptation: CaseAdaptation | None = None,
    ) -> None:
        self.configuration_name = configuration_name
        self.configuration = configuration
        self.dataset = dataset
        self.networks = list(networks)
        self.device = device
        self.tta = tta
        self.step_size = step_size
        self.batch_size = batch_size
        self.precision = precision
        self.previous_stage = previous_stage
        self.trained_model = trained_model
        self.adaptation = adaptation
        if configuration.previous_stage and previous_stage is None:
            raise ValueError(f"configuration {configuration_name} needs its previous stage predictor")

    # -- construction -------------------------------------------------------------------------------------------

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
        adapt: str | None = None,
    ) -> Predictor:
        """Load plans, dataset description and the checkpoint of every fold (``weights_only=True``).

        Args:
            model_folder: ``WORK/<dataset>`` or an imported model folder with the same layout.
            configuration: ``2d``, ``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres``...; None picks the one
                ``inference.json`` recommends or the only trained one.
            folds: fold numbers and/or ``"all"``; None = every trained fold (or the recommended ones).
            checkpoint: ``final``, ``best`` or ``latest``.
            device: ``auto`` (CUDA > MPS > CPU), ``cpu``, ``cuda``, ``cuda:1``...
            adapt: a test-time appearance adaptation method (``standardise``, ``normaliser`` or ``adversarial``;
                the folds need the record ``autoseg train-adapter`` writes, which ``autoseg run`` writes for
                ``standardise``), or None.

        Raises:
            UserError: the folder, configuration, a fold or a checkpoint is missing or does not fit the plan.
        """
        trained = locate_trained_model(model_folder, configuration=configuration, folds=folds, checkpoint=checkpoint)
        folder = WorkFolder.at(trained.model_folder)
        plans, dataset = _read_plans_and_dataset(folder)
        device = choose_device(None if str(device) == "auto" else str(device))

        previous_stage = None
        plan_configuration = plans.configuration(trained.configuration_name)
        extra_channels = 0
        if plan_configuration.previous_stage:
            previous_stage = cls.from_model_folder(
                folder, configuration=plan_configuration.previous_stage, folds=folds, checkpoint=checkpoint,
                device=device, tta=tta, step_size=step_size, batch_size=batch_size, precision=precision,
            )
            extra_channels = len(dataset.foreground_labels)

        networks, configuration_used = _load_fold_networks(
            trained, plan_configuration, in_channels=dataset.num_channels + extra_channels,
            out_channels=dataset.num_output_channels, device=device,
        )
        adaptation = _load_adaptation(trained, configuration_used, dataset, adapt) if adapt else None
        return cls(
            configuration_name=trained.configuration_name, configuration=configuration_used,
            dataset=dataset, networks=networks, device=device, tta=tta, step_size=step_size, batch_size=batch_size,
            precision=precision, previous_stage=previous_stage, trained_model=trained, adaptation=adaptation,
        )

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """All network spatial axes when mirroring is on (a plan may restrict them with ``mirror_axes``)."""
        if not self.tta:
            return None
        allowed = self.configuration.mirror_axes
        return allowed if allowed is not None else tuple(range(len(self.configuration.patch_size)))

    @property
    def checkpoint_paths_used(self) -> tuple[Path, ...]:
        """Every checkpoint this predictor runs: its own folds' and, for a cascade, the earlier stages'."""
        own = self.trained_model.checkpoint_paths if self.trained_model is not None else ()
        earlier = self.previous_stage.checkpoint_paths_used if self.previous_stage is not None else ()
        return (*own, *earlier)

    @property
    def previous_configuration(self) -> Configuration | None:
        return self.previous_stage.configuration if self.previous_stage is not None else None

    # -- prediction in the preprocessed space -------------------------------------------------------------------

    def predict_preprocessed(
        self, data: np.ndarray | torch.Tensor, *, previous_stage_data: np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Probabilities ``(K, z, y, x)`` (float32, CPU) of the fold-averaged logits for preprocessed ``data``
        ``(C, z, y, x)``: folds are averaged before the softmax, as the reference does (configurations, in an
        ensemble, are averaged after it)."""
        return self.predict_preprocessed_reported(data, previous_stage_data=previous_stage_data)[0]

    def network_logits(self, network: torch.nn.Module, data: torch.Tensor) -> torch.Tensor:
        """One network's logits ``(K, z, y, x)`` for preprocessed ``data``, with this predictor's options."""
        return predict_sliding_window(
            network, data, patch_size=self.configuration.patch_size,
            num_classes=self.dataset.num_output_channels, step_size=self.step_size, mirror_axes=self.mirror_axes,
            device=self.device, batch_size=self.batch_size, precision=self.precision,
        )

    def network_probabilities(self, network: torch.nn.Module, data: torch.Tensor) -> torch.Tensor:
        """One network's probabilities ``(K, z, y, x)`` for preprocessed ``data``, with this predictor's options."""
        return probabilities_from_logits(self.network_logits(network, data), uses_regions=self.dataset.has_regions)

    def predict_preprocessed_reported(
        self, data: np.ndarray | torch.Tensor, *, previous_stage_data: np.ndarray | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict | None]:
        """``predict_preprocessed`` plus, with test-time adaptation, what it did for every fold (else None)."""
        data = torch.as_tensor(np.asarray(data, dtype=np.float32) if isinstance(data, np.ndarray) else data).float()
        if self.previous_stage is not None:
            if previous_stage_data is None:
                raise ValueError(f"{self.configuration_name} needs the previous stage's preprocessed data")
            previous_probabilities = self.previous_stage.predict_preprocessed(previous_stage_data)
            extra = previous_stage_channels(previous_probabilities, tuple(data.shape[1:]), dataset=self.dataset)
            data = torch.cat([data, extra])
        total, fold_reports = None, []
        for index, network in enumerate(self.networks):
            logits = self.network_logits(network, data)
            if self.adaptation is not None:
                logits, report = self.adaptation.adapt(index, network, data, logits, self.network_logits)
                fold_reports.append({"fold": self.trained_model.folds[index], **report})
            total = logits if total is None else total.add_(logits)
            del logits  # large images: keep at most two (K, z, y, x) volumes alive
        if len(self.networks) > 1:
            total /= len(self.networks)
        probabilities = probabilities_from_logits(total, uses_regions=self.dataset.has_regions).cpu()
        return probabilities, self._adaptation_report(fold_reports)

    def _adaptation_report(self, fold_reports: list[dict]) -> dict | None:
        if self.adaptation is None:
            return None
        fell_back = [report["fold"] for report in fold_reports if report["used"] == "unadapted"]
        return {"configuration": self.configuration_name, "method": self.adaptation.method,
                "seed": self.adaptation.seed, "fell_back": bool(fell_back), "folds_fallen_back": fell_back,
                "folds": fold_reports}

    # -- whole cases --------------------------------------------------------------------------------------------

    def preprocess(self, image_paths: Sequence[str | os.PathLike[str]]) -> PreprocessedCase:
        """Read and preprocess one case (one file per channel)."""
        if len(image_paths) != self.dataset.num_channels:
            raise UserError(
                f"{image_paths[0] if image_paths else 'case'}: the model expects {self.dataset.num_channels} "
                f"channel file(s) per case, got {len(image_paths)}."
            )
        return preprocess_for_prediction(
            image_paths, configuration=self.configuration,
            previous_configuration=self.previous_configuration,
        )

    def predict_case(self, case: PreprocessedCase) -> np.ndarray:
        """Probabilities ``(K, z, y, x)`` float32 in the preprocessed space of ``case``."""
        return self.predict_case_reported(case)[0]

    def predict_case_reported(self, case: PreprocessedCase) -> tuple[np.ndarray, dict | None]:
        """``predict_case`` and the adaptation report (None without test-time adaptation)."""
        probabilities, report = self.predict_preprocessed_reported(
            case.data, previous_stage_data=case.previous_stage_data
        )
        return probabilities.numpy(), report

    def export(
        self, probabilities: np.ndarray, properties: dict, output_path: str | os.PathLike[str], *,
        save_probabilities: bool = False,
    ) -> None:
        """Write the label map with exactly the input's geometry (and the probabilities when asked)."""
        export_case(
            probabilities, properties, configuration=self.configuration, dataset=self.dataset,
            output_path=output_path, save_probabilities=save_probabilities,
        )

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
        """Segment each case (a list of channel files) into the matching output path; returns the written paths.

        ``workers`` > 0 preprocesses and exports in background processes while the network runs.
        """
        return run_prediction_pipeline(
            [self], list(zip(cases, output_paths, strict=True)), save_probabilities=save_probabilities,
            skip_existing=skip_existing, workers=workers, progress=progress,
        )

    def predict_array(
        self, array: np.ndarray, *, spacing: Sequence[float], return_probabilities: bool = False
    ) -> Prediction:
        """Segment an array ``(C, z, y, x)`` or ``(z, y, x)`` with voxel ``spacing`` (mm, array-axis order).

        A 2D image is ``(1, H, W)`` (or ``(C, 1, H, W)``). The result is in the array's own grid.
        """
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise UserError(f"predict_array needs a (C, z, y, x) or (z, y, x) array, got shape {array.shape}.")
        if len(spacing) != 3:
            raise UserError(f"spacing needs one value per array axis (z, y, x), got {tuple(spacing)}.")
        geometry = Geometry(
            spacing=tuple(float(s) for s in spacing), origin=(0.0, 0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), shape=tuple(int(s) for s in array.shape[1:]),
        )
        # Going through files keeps one preprocessing code path for arrays and files (reading is exact).
        with tempfile.TemporaryDirectory(prefix="autoseg-predict-") as folder:
            paths = []
            for channel, channel_array in enumerate(array):
                path = Path(folder) / f"array_{channel:04d}.nii"
                write_image(channel_array, geometry, path)
                paths.append(path)
            case = self.preprocess(paths)
        probabilities = self.predict_case(case)
        probabilities = probabilities_in_input_grid(
            probabilities, case.properties, configuration=self.configuration, dataset=self.dataset
        )
        label_map = label_map_from_probabilities(probabilities, dataset=self.dataset)
        return Prediction(label_map=label_map, probabilities=probabilities if return_probabilities else None)
