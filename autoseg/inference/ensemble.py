"""What `autoseg predict` runs: the members the recipe chose (one configuration or an ensemble) plus post-processing.

An ensemble averages its members' probabilities in the input's grid and applies the post-processing decision
(``postprocessing.json``) to the label maps. Which members and which post-processing, from the checkpoints of a model
folder or from an ONNX export, is decided once by ``autoseg.inference.loading.load_ensemble``; a single predictor is
an ensemble of one member without post-processing.

Example (``model_folder`` is ``WORK/Dataset004_Hippocampus``; its ``inference.json`` chose folds 0 and 1 of
``3d_fullres``, with post-processing):
    >>> from autoseg.inference import ModelSource, PredictionOptions, load_ensemble
    >>> models = load_ensemble(ModelSource.checkpoints(model_folder), PredictionOptions(device="cpu", tta=False))
    >>> models.description
    '3d_fullres (folds 0, 1), post-processed'
    >>> written = models.predict_files([[image_path]], ["out/hippocampus_001.nii.gz"], progress=False)
    >>> [str(path) for path in written]
    ['out/hippocampus_001.nii.gz']
    >>> from autoseg.io.images import read_image
    >>> read_image(written[0]).geometry == read_image(image_path).geometry  # the input's grid, exactly
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.inference.case_input import channels_first, preprocess_array_for_prediction
from autoseg.inference.export import members_label_map
from autoseg.inference.pipeline import run_prediction_pipeline
from autoseg.inference.predictor import Prediction, Predictor
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.quality_model import QualityModel


@dataclasses.dataclass
class ModelEnsemble:
    """Predictors of one dataset whose probabilities are averaged, and the post-processing applied afterwards."""

    members: list[Predictor]
    postprocessing: PostprocessingDecision | None = None
    quality: QualityModel | None = None

    @property
    def description(self) -> str:
        parts = []
        for member in self.members:
            folds = ", ".join(member.trained_model.folds) if member.trained_model else "?"
            parts.append(f"{member.configuration_name} (folds {folds})")
        return " + ".join(parts) + (", post-processed" if self.postprocessing else "")

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

        ``save_probabilities`` also writes ``CASE.npz`` (the averaged probabilities in the input's grid);
        ``skip_existing`` leaves outputs already there; ``workers`` > 0 preprocesses and exports in background
        processes while the network runs. Unless the members' ``options.quality`` is off, every case's quality
        estimate goes to ``quality.csv`` next to the outputs (``autoseg.inference.quality_table``).
        """
        return run_prediction_pipeline(
            self.members, list(zip(cases, output_paths, strict=True)), save_probabilities=save_probabilities,
            postprocessing=self.postprocessing, skip_existing=skip_existing, workers=workers, progress=progress,
            quality=self.quality,
        )

    def predict_array(
        self, array: np.ndarray, *, spacing: Sequence[float], return_probabilities: bool = False
    ) -> Prediction:
        """The label map ``predict_files`` writes for the array's image file, computed in memory.

        ``array`` is ``(C, z, y, x)`` or ``(z, y, x)`` with voxel ``spacing`` (mm, array-axis order); every member
        preprocesses and predicts it, their probabilities are averaged in the array's grid and the post-processing
        is applied, as for files. ``return_probabilities`` adds the averaged probabilities ``(K, z, y, x)``.
        """
        dataset = self.members[0].dataset
        array = channels_first(array, spacing, num_channels=dataset.num_channels)
        outputs = []
        for member in self.members:
            case = preprocess_array_for_prediction(
                array, spacing, configuration=member.configuration, previous_configuration=member.previous_configuration
            )
            outputs.append((member.predict_case(case), case.properties, member.configuration))
            del case
        label_map, probabilities = members_label_map(
            outputs, dataset=dataset, postprocessing=self.postprocessing, with_probabilities=True
        )
        return Prediction(label_map=label_map, probabilities=probabilities if return_probabilities else None)
