"""One-line, human-readable description of a network for logs and the start of training."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad or not trainable_only)


def _format_count(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:.2f} M"
    if count >= 1_000:
        return f"{count / 1_000:.1f} k"
    return str(count)


def describe(model: nn.Module) -> str:
    """One line: architecture, dimension, stages, feature range, strides, parameter count, deep supervision.

    E.g. ``plain_unet 3D, 4 stages, features 32-256, strides [1,1,1] [2,2,2] ..., 5.60 M parameters, deep
    supervision on``.
    """
    parameters = _format_count(count_parameters(model))
    if not hasattr(model, "features_per_stage"):
        return f"{type(model).__name__}, {parameters} parameters"
    features = model.features_per_stage
    strides = " ".join("[" + ",".join(str(step) for step in stride) + "]" for stride in model.strides)
    supervision = "on" if model.deep_supervision else "off"
    return (
        f"{model.architecture} {model.dimension}D, {len(features)} stages, features {features[0]}-{max(features)}, "
        f"strides {strides}, {parameters} parameters, deep supervision {supervision}"
    )
