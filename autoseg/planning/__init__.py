"""Experiment planning: from a dataset fingerprint to plans (configurations, networks, patches, batches)."""

from __future__ import annotations

from autoseg.planning.planner import plan_experiment

__all__ = ["plan_experiment"]
