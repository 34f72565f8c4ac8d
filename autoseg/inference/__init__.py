"""Inference: sliding-window prediction, fold ensembles, cascades, and export back to the input's geometry.

``load_ensemble(ModelSource, PredictionOptions)`` loads what ``autoseg predict`` runs, from checkpoints or an ONNX
export; ``load_predictor`` loads one configuration.
"""

from __future__ import annotations

from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.loading import load_ensemble, load_predictor
from autoseg.inference.model_source import ModelSource
from autoseg.inference.options import PredictionOptions
from autoseg.inference.predictor import Prediction, Predictor
from autoseg.inference.sliding_window import gaussian_importance_map, predict_sliding_window, tile_starts

__all__ = [
    "ModelEnsemble",
    "ModelSource",
    "Prediction",
    "PredictionOptions",
    "Predictor",
    "gaussian_importance_map",
    "load_ensemble",
    "load_predictor",
    "predict_sliding_window",
    "tile_starts",
]
