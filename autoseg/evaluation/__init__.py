"""Evaluation: per-case, per-class overlap and surface metrics, folder evaluation, and overlay images."""
