"""Dataset fingerprint: what the data is (spacings, shapes, crops, intensities, classes), computed once and cached."""

from __future__ import annotations

from autoseg.fingerprint.compute import compute_fingerprint

__all__ = ["compute_fingerprint"]
