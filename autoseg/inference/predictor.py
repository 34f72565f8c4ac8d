"""The predictor: the networks of one configuration turned into a function from images (files or arrays) to labels.

For each case: preprocess exactly as in training (``autoseg.transforms.case``), predict logits with the sliding
window for every fold, average the logits over folds (as the reference does), convert them to probabilities (softmax,
or sigmoid for regions), then resample back to the input's grid and take the label map (``autoseg.inference.export``).
A ``3d_cascade_fullres`` predictor first runs its ``3d_lowres`` predictor on the same case and feeds that
segmentation as extra one-hot input channels. Where the networks come from (checkpoints or ONNX graphs) is the
business of ``autoseg.inference.loading``; predicting many files, of ``ModelEnsemble.predict_files``.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus`` with two folds of a small ``3d_fullres`` model):
    >>> from autoseg.inference import ModelSource, PredictionOptions, load_predictor
    >>> predictor = load_predictor(ModelSource.checkpoints(model_folder, folds=(0, 1)),
    ...                            PredictionOptions(device="cpu", tta=False))
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.inference.adaptation.adapter import CaseAdaptation
from autoseg.inference.case_input import (
    NetworkInput,
    channels_first,
    preprocess_array_for_prediction,
    preprocess_for_prediction,
)
from autoseg.inference.export import members_label_map
from autoseg.inference.label_maps import previous_stage_channels, probabilities_from_logits
from autoseg.inference.model_folder import TrainedModel
from autoseg.inference.options import PredictionOptions
from autoseg.inference.quality import (
    AgreementCounts,
    FlipAgreement,
    NetworkSignals,
    class_masks,
    label_codes,
    probability_signals,
)
from autoseg.inference.sliding_window import mirror_combinations, predict_sliding_window
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration


@dataclasses.dataclass
class MemberPrediction:
    """One configuration's prediction of a preprocessed case: probabilities ``(K, z, y, x)`` in the preprocessed
    grid, the test-time adaptation report (None without adaptation) and the quality signals (None when off)."""

    probabilities: np.ndarray
    adaptation_report: dict | None = None
    quality: NetworkSignals | None = None


@dataclasses.dataclass
class Prediction:
    """A label map in the input's grid ``(z, y, x)`` and, when asked for, the class probabilities ``(K, z, y, x)``."""

    label_map: np.ndarray
    probabilities: np.ndarray | None = None


class Predictor:
    """Segments images with an ensemble of trained folds of one configuration.

    Load one with ``autoseg.inference.loading.load_predictor`` (checkpoints or ONNX graphs), or build it from
    networks. ``options`` (``PredictionOptions``) sets mirroring, step size, batch size, precision and device.
    """

    def __init__(
        self,
        *,
        configuration_name: str,
        configuration: Configuration,
        dataset: RawDataset,
        networks: Sequence[torch.nn.Module],
        options: PredictionOptions = PredictionOptions(),  # noqa: B008 - frozen, so one shared default is safe
        previous_stage: Predictor | None = None,
        trained_model: TrainedModel | None = None,
        adaptation: CaseAdaptation | None = None,
    ) -> None:
        self.configuration_name = configuration_name
        self.configuration = configuration
        self.dataset = dataset
        self.networks = list(networks)
        self.options = options
        self.device = options.torch_device()
        self.previous_stage = previous_stage
        self.trained_model = trained_model
        self.adaptation = adaptation
        if configuration.previous_stage and previous_stage is None:
            raise ValueError(f"configuration {configuration_name} needs its previous stage predictor")

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """All network spatial axes when mirroring is on (a plan may restrict them with ``mirror_axes``)."""
        if not self.options.tta:
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

    def network_logits(
        self, network: torch.nn.Module, data: torch.Tensor, *, agreement: FlipAgreement | None = None
    ) -> torch.Tensor:
        """One network's logits ``(K, z, y, x)`` for preprocessed ``data``, with this predictor's options;
        ``agreement`` collects how far the mirror passes agree."""
        return predict_sliding_window(
            network, data, patch_size=self.configuration.patch_size,
            num_classes=self.dataset.num_output_channels, step_size=self.options.step_size,
            mirror_axes=self.mirror_axes, device=self.device, batch_size=self.options.batch_size,
            precision=self.options.precision, agreement=agreement,
        )

    @property
    def quality_targets(self) -> tuple[int, ...]:
        """The label values the quality signals are kept for: foreground classes, or each region's painted value."""
        if self.dataset.has_regions:
            return self.dataset.regions_class_order or tuple(range(1, len(self.dataset.regions) + 1))
        return self.dataset.foreground_labels

    def network_probabilities(self, network: torch.nn.Module, data: torch.Tensor) -> torch.Tensor:
        """One network's probabilities ``(K, z, y, x)`` for preprocessed ``data``, with this predictor's options."""
        return probabilities_from_logits(self.network_logits(network, data), uses_regions=self.dataset.has_regions)

    def predict_preprocessed_reported(
        self, data: np.ndarray | torch.Tensor, *, previous_stage_data: np.ndarray | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict | None]:
        """``predict_preprocessed`` plus, with test-time adaptation, what it did for every fold (else None)."""
        probabilities, report, _ = self._predict(data, previous_stage_data=previous_stage_data, assess=False)
        return probabilities, report

    def _predict(
        self, data: np.ndarray | torch.Tensor, *, previous_stage_data: np.ndarray | torch.Tensor | None, assess: bool
    ) -> tuple[torch.Tensor, dict | None, NetworkSignals | None]:
        data = torch.as_tensor(np.asarray(data, dtype=np.float32) if isinstance(data, np.ndarray) else data).float()
        if self.previous_stage is not None:
            if previous_stage_data is None:
                raise ValueError(f"{self.configuration_name} needs the previous stage's preprocessed data")
            previous_probabilities = self.previous_stage.predict_preprocessed(previous_stage_data)
            extra = previous_stage_channels(previous_probabilities, tuple(data.shape[1:]), dataset=self.dataset)
            data = torch.cat([data, extra])
        regions = self.dataset.has_regions
        targets = self.quality_targets
        flips = len(mirror_combinations(self.mirror_axes))
        total, fold_reports, mirror, fold_codes = None, [], [], []
        for index, network in enumerate(self.networks):
            agreement = (FlipAgreement(targets=targets, num_flips=flips, uses_regions=regions)
                         if assess and flips > 1 else None)
            logits = self.network_logits(network, data, agreement=agreement)
            if self.adaptation is not None:
                logits, report = self.adaptation.adapt(index, network, data, logits, self.network_logits)
                fold_reports.append({"fold": self.trained_model.folds[index], **report})
            if agreement is not None:
                mirror.append(agreement.counts.pairwise_dice())
            if assess and len(self.networks) > 1:
                fold_codes.append(label_codes(logits[None], uses_regions=regions)[0])
            total = logits if total is None else total.add_(logits)
            del logits  # large images: keep at most two (K, z, y, x) volumes alive
        if len(self.networks) > 1:
            total /= len(self.networks)
        probabilities = probabilities_from_logits(total, uses_regions=regions).cpu()
        signals = None
        if assess:
            signals = NetworkSignals(**probability_signals(probabilities, uses_regions=regions))
            if mirror:
                signals.mirror_agreement = dict(zip(targets, np.mean(mirror, axis=0).tolist(), strict=True))
            if fold_codes:
                folds = AgreementCounts(num_targets=len(targets), num_maps=len(fold_codes))
                folds.add(class_masks(torch.stack(fold_codes), targets=targets))
                signals.fold_agreement = dict(zip(targets, folds.pairwise_dice().tolist(), strict=True))
        return probabilities, self._adaptation_report(fold_reports), signals

    def _adaptation_report(self, fold_reports: list[dict]) -> dict | None:
        if self.adaptation is None:
            return None
        fell_back = [report["fold"] for report in fold_reports if report["used"] == "unadapted"]
        return {"configuration": self.configuration_name, "method": self.adaptation.method,
                "seed": self.adaptation.seed, "fell_back": bool(fell_back), "folds_fallen_back": fell_back,
                "folds": fold_reports}

    # -- whole cases --------------------------------------------------------------------------------------------

    def preprocess(self, image_paths: Sequence[str | os.PathLike[str]]) -> NetworkInput:
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

    def predict_case(self, case: NetworkInput) -> np.ndarray:
        """Probabilities ``(K, z, y, x)`` float32 in the preprocessed space of ``case``."""
        return self.predict_preprocessed(case.data, previous_stage_data=case.previous_stage_data).numpy()

    def predict_case_assessed(self, case: NetworkInput) -> MemberPrediction:
        """``predict_case``, the adaptation report and, unless ``options.quality`` is off, the quality signals."""
        probabilities, report, signals = self._predict(
            case.data, previous_stage_data=case.previous_stage_data, assess=self.options.quality
        )
        return MemberPrediction(probabilities.numpy(), report, signals)

    def predict_array(
        self, array: np.ndarray, *, spacing: Sequence[float], return_probabilities: bool = False
    ) -> Prediction:
        """Segment an array ``(C, z, y, x)`` or ``(z, y, x)`` with voxel ``spacing`` (mm, array-axis order).

        A 2D image is ``(1, H, W)`` (or ``(C, 1, H, W)``). The result is in the array's own grid, and equals what
        predicting the array's file gives: the same preprocessing, resampling, cropping and export code runs.
        """
        array = channels_first(array, spacing, num_channels=self.dataset.num_channels)
        case = preprocess_array_for_prediction(
            array, spacing, configuration=self.configuration, previous_configuration=self.previous_configuration
        )
        label_map, probabilities = members_label_map(
            [(self.predict_case(case), case.properties, self.configuration)], dataset=self.dataset,
            with_probabilities=True,
        )
        return Prediction(label_map=label_map, probabilities=probabilities if return_probabilities else None)
