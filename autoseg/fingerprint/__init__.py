"""Dataset fingerprint: what the data is (spacings, shapes, crops, intensities, classes), computed once and cached."""

from __future__ import annotations

from autoseg.fingerprint.compute import FINGERPRINT_FILE_NAME, compute_fingerprint, load_fingerprint

__all__ = ["FINGERPRINT_FILE_NAME", "compute_fingerprint", "load_fingerprint"]
