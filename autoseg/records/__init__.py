"""The contract between stages: typed, JSON-backed records of everything one stage hands to the next.

Every stage imports these (and ``io``, ``networks``, ``utils``), never another stage; see docs/design.md.
"""

from __future__ import annotations

from autoseg.records.configuration_parts import Network, NormalizationScheme, Resampling
from autoseg.records.dataset import Case, Problem, RawDataset
from autoseg.records.fingerprint import FINGERPRINT_VERSION, load_fingerprint
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.records.plans import Configuration, Plans, load_plans
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.work_folder import WorkFolder

__all__ = [
    "FINGERPRINT_VERSION",
    "Case",
    "Configuration",
    "InferenceRecipe",
    "Network",
    "NormalizationScheme",
    "Plans",
    "PostprocessingDecision",
    "Problem",
    "RawDataset",
    "RecipeModel",
    "Resampling",
    "WorkFolder",
    "load_fingerprint",
    "load_plans",
]
