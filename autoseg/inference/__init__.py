"""Inference: sliding-window prediction, fold ensembles, cascades, and export back to the input's geometry."""

from __future__ import annotations

from autoseg.inference.ensemble import ModelEnsemble
from autoseg.inference.predictor import Prediction, Predictor
from autoseg.inference.sliding_window import gaussian_importance_map, predict_sliding_window, tile_starts

__all__ = [
    "ModelEnsemble",
    "Prediction",
    "Predictor",
    "gaussian_importance_map",
    "predict_sliding_window",
    "tile_starts",
]
