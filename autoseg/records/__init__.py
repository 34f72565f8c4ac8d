"""The contract between stages: typed, JSON-backed records of everything one stage hands to the next.

Every stage imports these (and ``io``, ``networks``, ``utils``), never another stage; see docs/design.md.
"""

from __future__ import annotations

from autoseg.records.compute_plan import ComputePlan, ConfigurationCost
from autoseg.records.configuration_parts import Network, NormalizationScheme, Resampling
from autoseg.records.dataset import Case, Problem, RawDataset
from autoseg.records.evaluation_summary import EvaluationSummary
from autoseg.records.fingerprint import (
    FINGERPRINT_VERSION,
    Fingerprint,
    FingerprintCase,
    IntensityStatistics,
    load_fingerprint,
)
from autoseg.records.inference_recipe import InferenceRecipe, RecipeCandidate, RecipeModel
from autoseg.records.plans import Configuration, Plans, load_plans
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.work_folder import WorkFolder

__all__ = [
    "FINGERPRINT_VERSION",
    "Case",
    "ComputePlan",
    "Configuration",
    "ConfigurationCost",
    "EvaluationSummary",
    "Fingerprint",
    "FingerprintCase",
    "InferenceRecipe",
    "IntensityStatistics",
    "Network",
    "NormalizationScheme",
    "Plans",
    "PostprocessingDecision",
    "Problem",
    "RawDataset",
    "RecipeCandidate",
    "RecipeModel",
    "Resampling",
    "WorkFolder",
    "load_fingerprint",
    "load_plans",
]
