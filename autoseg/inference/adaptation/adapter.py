"""A fold's adapter on disk, how ``train-adapter`` makes it, and how ``predict --adapt`` uses it per case.

Files (``WorkFolder.adaptation(configuration, fold)``, i.e. ``models/CONFIG/fold_K/adaptation/``)::

    shape_prior.pt      the shape autoencoder of the ``normaliser`` method (a state dict)
    adversarial.pt      renderer, discriminators and a bank of training windows of the ``adversarial`` method
    adaptation.json     written last: format, the checkpoint's SHA-256, the source ranges, the methods and settings

Every case starts from these trained states (copies; nothing is carried from one case to the next) and the
adapted prediction replaces the unadapted one only when ``SourceRanges.problems`` finds nothing wrong with it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoseg.errors import UserError
from autoseg.inference.adaptation.adversarial import (
    AdversarialParts,
    AdversarialSettings,
    adapt_adversarial,
    train_adversarial,
)
from autoseg.inference.adaptation.normaliser import NormaliserSettings, adapt_normaliser, train_shape_prior
from autoseg.inference.adaptation.plausibility import PredictionSummary, SourceRanges
from autoseg.inference.adaptation.segmenter import Composed, FrozenSegmenter, ImageWindows, target_channels
from autoseg.inference.adaptation.small_networks import ShapeAutoencoder
from autoseg.inference.adaptation.standardise import SourceIntensities, intensity_landmarks, standardiser_for
from autoseg.inference.label_maps import probabilities_from_logits
from autoseg.records.adaptation_record import read_adaptation_record
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration
from autoseg.transforms.case import preprocess_case
from autoseg.utils.files import atomic_torch_save, sha256_file, write_json

ADAPTATION_METHODS = ("normaliser", "adversarial", "standardise")  # the last: intensity standardisation alone
WINDOW_METHODS = ("normaliser", "adversarial")  # the methods that train on windows of the training images
ADAPTATION_FILE = "adaptation.json"
SHAPE_PRIOR_FILE = "shape_prior.pt"
ADVERSARIAL_FILE = "adversarial.pt"
ADAPTATION_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class AdapterTrainingSettings:
    """What ``train-adapter`` does: how many training cases and windows, and how long each part trains."""

    seed: int = 0
    max_cases: int = 64
    windows_per_case: int = 2
    shape_prior_steps: int = 600
    adversarial_steps: int = 300
    methods: tuple[str, ...] = ADAPTATION_METHODS


@dataclasses.dataclass
class SourceWindows:
    """Training windows ``(N, C, *patch)`` with their target channels ``(N, K, *patch)``, per-case summaries of the
    predictions and the intensity landmarks of each case."""

    images: torch.Tensor
    targets: torch.Tensor
    summaries: list[PredictionSummary]
    landmarks: list[np.ndarray] = dataclasses.field(default_factory=list)


def _case_windows(
    data: np.ndarray, segmentation: np.ndarray, patch_size: Sequence[int], *, dataset: RawDataset, count: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    windows = ImageWindows(data, patch_size)
    labels = ImageWindows(target_channels(segmentation, dataset=dataset), patch_size)
    chosen = windows.sample(count, generator)
    return windows.batch(chosen), labels.batch(chosen)


def collect_source_windows(
    cases: Sequence[tuple[Sequence[str], str]], *, configuration: Configuration, dataset: RawDataset,
    predict: Callable[[np.ndarray], torch.Tensor], settings: AdapterTrainingSettings, generator: torch.Generator,
) -> SourceWindows:
    """Preprocess up to ``max_cases`` training cases ``(image paths, label path)``: their windows and summaries.

    Windows are cut only for the methods that train on them (``standardise`` alone needs none)."""
    order = torch.randperm(len(cases), generator=generator)[: settings.max_cases].tolist()
    needs_windows = any(method in WINDOW_METHODS for method in settings.methods)
    images, targets, summaries, landmarks = [], [], [], []
    for index in sorted(order):
        image_paths, label_path = cases[index]
        data, segmentation, _ = preprocess_case(list(image_paths), label_path, configuration=configuration)
        summaries.append(PredictionSummary.of(predict(data), uses_regions=dataset.has_regions))
        landmarks.append(intensity_landmarks(data))
        if needs_windows:
            case_images, case_targets = _case_windows(
                data, segmentation, configuration.patch_size, dataset=dataset, count=settings.windows_per_case,
                generator=generator,
            )
            images.append(case_images)
            targets.append(case_targets)
    if not needs_windows:
        return SourceWindows(torch.empty(0), torch.empty(0), summaries, landmarks)
    return SourceWindows(torch.cat(images), torch.cat(targets), summaries, landmarks)


def train_fold_adapter(
    network: nn.Module, source: SourceWindows, folder: Path, *, checkpoint_path: Path, configuration: Configuration,
    dataset: RawDataset, settings: AdapterTrainingSettings, generator: torch.Generator,
) -> dict:
    """Train the requested methods' parts on ``source`` and write them into ``folder``; returns adaptation.json."""
    segmenter = FrozenSegmenter(network, uses_regions=dataset.has_regions)
    patch_size = tuple(configuration.patch_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTATION_FILE).unlink(missing_ok=True)  # the record goes last: parts without it are incomplete
    methods: dict[str, dict] = {}
    if source.landmarks:  # nothing to train: the record's source_intensities are all it needs
        methods["standardise"] = {"settings": {}}
    if "normaliser" in settings.methods:
        prior, losses = train_shape_prior(source.targets, patch_size=patch_size, steps=settings.shape_prior_steps,
                                          generator=generator, uses_regions=dataset.has_regions)
        atomic_torch_save(prior.state_dict(), folder / SHAPE_PRIOR_FILE)
        methods["normaliser"] = {"file": SHAPE_PRIOR_FILE, "training_steps": settings.shape_prior_steps,
                                 "training_loss_first_last": [losses[0], losses[-1]] if losses else [],
                                 "settings": dataclasses.asdict(NormaliserSettings())}
    if "adversarial" in settings.methods:
        adversarial_settings = AdversarialSettings()
        device = next(network.parameters()).device
        parts, losses = train_adversarial(segmenter, source.images.to(device), source.targets.to(device),
                                          steps=settings.adversarial_steps, settings=adversarial_settings,
                                          generator=generator)
        parts.renderer.cpu()
        parts.discriminators.cpu()
        bank = torch.randperm(len(source.images), generator=generator)[: adversarial_settings.bank_size]
        atomic_torch_save({**parts.state_dict(), "bank_images": source.images[bank].clone(),
                           "bank_targets": source.targets[bank].clone()}, folder / ADVERSARIAL_FILE)
        methods["adversarial"] = {"file": ADVERSARIAL_FILE, "training_steps": settings.adversarial_steps,
                                  "training_loss_first_last": [losses[0], losses[-1]] if losses else [],
                                  "settings": dataclasses.asdict(adversarial_settings)}
    record = {
        "format": ADAPTATION_FORMAT, "checkpoint": checkpoint_path.name,
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "seed": settings.seed, "training_windows": len(source.images),
        "source_ranges": SourceRanges.of(source.summaries).to_dict(),
        "source_intensities": SourceIntensities.of(source.landmarks).to_dict() if source.landmarks else None,
        "source_summaries": [summary.to_dict() for summary in source.summaries], "methods": methods,
    }
    write_json(folder / ADAPTATION_FILE, record)
    return record


@dataclasses.dataclass
class FoldAdapter:
    """One fold's trained adaptation parts, loaded from its folder."""

    folder: Path
    ranges: SourceRanges
    shape_prior: ShapeAutoencoder | None
    adversarial: AdversarialParts | None
    bank: tuple[torch.Tensor, torch.Tensor] | None
    settings: NormaliserSettings | AdversarialSettings | None
    intensities: SourceIntensities | None = None  # None: an adapter recorded without them (no standardisation)

    def to(self, device: torch.device) -> FoldAdapter:
        """The adapter's networks and bank on ``device`` (where the segmenter runs)."""
        if self.shape_prior is not None:
            self.shape_prior.to(device)
        if self.adversarial is not None:
            self.adversarial.renderer.to(device)
            self.adversarial.discriminators.to(device)
            self.bank = (self.bank[0].to(device), self.bank[1].to(device))
        return self


def _require_record(folder: Path, checkpoint_path: Path, method: str, model_folder: Path) -> dict:
    record_path = folder / ADAPTATION_FILE
    if not record_path.is_file():
        raise UserError(
            f"{model_folder}: was trained without a test-time adapter for {checkpoint_path.parent.name} "
            f"(no {record_path.relative_to(model_folder)}); run `autoseg train-adapter {model_folder}` first."
        )
    record = read_adaptation_record(record_path)
    if record.get("checkpoint_sha256") != sha256_file(checkpoint_path):
        raise UserError(f"{record_path}: was made for another {checkpoint_path.name} than the one there now; run "
                        f"`autoseg train-adapter {model_folder}` again.")
    if method not in record.get("methods", {}):
        raise UserError(f"{record_path}: holds no '{method}' adapter (it has: "
                        f"{', '.join(record.get('methods', {})) or 'none'}); run `autoseg train-adapter "
                        f"{model_folder} --methods {method}`.")
    return record


def load_fold_adapter(
    folder: Path, *, checkpoint_path: Path, method: str, model_folder: Path, configuration: Configuration,
    channels: int, classes: int,
) -> FoldAdapter:
    """The adapter of one fold for ``method``; one sentence when it is missing or made for another checkpoint."""
    record = _require_record(folder, checkpoint_path, method, model_folder)
    ranges = SourceRanges.from_dict(record["source_ranges"])
    recorded_intensities = record.get("source_intensities")
    intensities = SourceIntensities.from_dict(recorded_intensities) if recorded_intensities else None
    patch_size = tuple(configuration.patch_size)
    recorded_settings = record["methods"][method].get("settings", {})
    if method == "standardise":
        return FoldAdapter(folder, ranges, None, None, None, None, intensities)
    if method == "normaliser":
        prior = ShapeAutoencoder(classes, patch_size=patch_size)
        prior.load_state_dict(torch.load(folder / SHAPE_PRIOR_FILE, map_location="cpu", weights_only=True))
        return FoldAdapter(folder, ranges, prior.eval(), None, None, NormaliserSettings(**recorded_settings),
                           intensities)
    state = torch.load(folder / ADVERSARIAL_FILE, map_location="cpu", weights_only=True)
    parts = AdversarialParts.new(channels=channels, classes=classes, dimension=len(patch_size))
    parts.load_state_dict(state)
    return FoldAdapter(folder, ranges, None, parts, (state["bank_images"], state["bank_targets"]),
                       AdversarialSettings(**recorded_settings), intensities)


@dataclasses.dataclass
class CaseAdaptation:
    """What ``predict --adapt`` runs for every fold network of every case: adapt, check, keep or fall back."""

    method: str
    adapters: list[FoldAdapter]
    configuration: Configuration
    channels: int
    uses_regions: bool
    seed: int = 0

    def _front(self, adapter: FoldAdapter, segmenter: FrozenSegmenter, windows: ImageWindows) -> tuple:
        if self.method == "standardise":
            return nn.Identity(), []
        generator = torch.Generator().manual_seed(self.seed)  # the same seed for every case: order-independent
        with torch.enable_grad():
            if self.method == "normaliser":
                return adapt_normaliser(segmenter, adapter.shape_prior, windows, channels=self.channels,
                                        settings=adapter.settings, generator=generator)
            return adapt_adversarial(segmenter, adapter.adversarial, adapter.bank, windows,
                                     settings=adapter.settings, generator=generator)

    def adapt(
        self, fold_index: int, network: nn.Module, data: torch.Tensor, unadapted: torch.Tensor,
        predict: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict]:
        """The logits to keep for one fold network (adapted, or ``unadapted`` on fallback) and the report.

        ``unadapted`` are the network's logits for ``data``; ``predict(network, image)`` is the sliding-window
        prediction of logits; ``image`` is ``data`` after intensity
        standardisation (``autoseg.inference.adaptation.standardise``) when the adapter recorded the training images'
        intensities and the case's lie outside them."""
        started = time.perf_counter()
        adapter = self.adapters[fold_index]
        segmenter = FrozenSegmenter(network, uses_regions=self.uses_regions)
        device = next(network.parameters()).device
        standardiser = standardiser_for(data, adapter.intensities)
        if standardiser is not None:  # the learned front adapts the standardised image
            standardiser.to(device)
            with torch.no_grad():
                data = standardiser(torch.as_tensor(data, device=device)[None])[0]
        windows = ImageWindows(data, self.configuration.patch_size, device=device)
        front, losses = self._front(adapter.to(device), segmenter, windows)
        adapted = predict(Composed(front, network), data)
        before = PredictionSummary.of(probabilities_from_logits(unadapted, uses_regions=self.uses_regions),
                                      uses_regions=self.uses_regions)
        after = PredictionSummary.of(probabilities_from_logits(adapted, uses_regions=self.uses_regions),
                                     uses_regions=self.uses_regions)
        problems = adapter.ranges.problems(after, before)
        report = {
            "used": "unadapted" if problems else "adapted", "fallback_reasons": problems,
            "unadapted": before.to_dict(), "adapted": after.to_dict(),
            "standardised": standardiser is not None,
            "losses": [round(loss, 6) for loss in losses], "seconds": round(time.perf_counter() - started, 3),
        }
        return (unadapted if problems else adapted), report
