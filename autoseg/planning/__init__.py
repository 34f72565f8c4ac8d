"""Experiment planning: from a dataset fingerprint to plans.json (configurations, networks, patches, batches)."""

from __future__ import annotations

from autoseg.planning.planner import plan_experiment
from autoseg.planning.plans import PLANS_FILE_NAME, load_plans, resolve_configuration

__all__ = ["PLANS_FILE_NAME", "load_plans", "plan_experiment", "resolve_configuration"]
