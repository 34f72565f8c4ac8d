"""autoseg: a self-configuring medical image segmentation pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
