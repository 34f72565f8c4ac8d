"""Transfer learning: start from another model's weights wherever the tensor shapes agree.

A model trained on another dataset usually differs in its output head (other classes) and sometimes in its first
convolution (other input channels). Every tensor whose name and shape match is copied. A convolution weight that differs
only in its input-channel axis is adapted: the shared channels are copied and extra channels get the mean of the
pretrained ones (so a new modality starts as an average of the known ones). Everything else keeps its fresh
initialisation; all of it is reported, so the user sees exactly what was transferred.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from autoseg.records.checkpoint import load_checkpoint, network_weights_of


@dataclasses.dataclass(frozen=True)
class PretrainedReport:
    """Names of the tensors copied, skipped for a shape mismatch, and absent from the pretrained file."""

    loaded: tuple[str, ...]
    adapted_input_channels: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    missing_in_checkpoint: tuple[str, ...]
    unused_in_checkpoint: tuple[str, ...]

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors"
        if self.adapted_input_channels:
            text += f"; adapted to the new input channels: {', '.join(self.adapted_input_channels)}"
        if self.shape_mismatch:
            text += f"; kept fresh (shape differs): {', '.join(self.shape_mismatch)}"
        if self.missing_in_checkpoint:
            text += f"; kept fresh (not in checkpoint): {', '.join(self.missing_in_checkpoint)}"
        if self.unused_in_checkpoint:
            text += f"; ignored from checkpoint: {len(self.unused_in_checkpoint)} tensors"
        return text


def load_pretrained_weights(model: torch.nn.Module, checkpoint_path: str | os.PathLike[str]) -> PretrainedReport:
    """Copy matching-shape tensors of ``checkpoint_path`` (an autoseg checkpoint or a bare state dict) into
    ``model`` in place and report what happened."""
    pretrained = network_weights_of(load_checkpoint(checkpoint_path))
    own = model.state_dict()
    loaded, adapted, mismatched = [], [], []
    for name, tensor in own.items():
        if name not in pretrained:
            continue
        source = pretrained[name]
        if source.shape == tensor.shape:
            own[name] = source.to(dtype=tensor.dtype)
            loaded.append(name)
        elif differs_only_in_input_channels(source, tensor):
            own[name] = adapt_input_channels(source, tensor.shape[1]).to(dtype=tensor.dtype)
            adapted.append(name)
        else:
            mismatched.append(name)
    model.load_state_dict(own)
    return PretrainedReport(
        loaded=tuple(loaded),
        adapted_input_channels=tuple(adapted),
        shape_mismatch=tuple(mismatched),
        missing_in_checkpoint=tuple(name for name in own if name not in pretrained),
        unused_in_checkpoint=tuple(name for name in pretrained if name not in own),
    )


def differs_only_in_input_channels(source: torch.Tensor, target: torch.Tensor) -> bool:
    """A convolution weight ``(out, in, *kernel)`` whose shapes agree everywhere but in ``in``."""
    return (
        source.ndim >= 3
        and source.ndim == target.ndim
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
        and source.shape[1] != target.shape[1]
    )


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` input channels of ``weight``, padded with the mean over its input channels."""
    if channels <= weight.shape[1]:
        return weight[:, :channels].clone()
    mean = weight.mean(dim=1, keepdim=True)
    extra = mean.expand(-1, channels - weight.shape[1], *weight.shape[2:])
    return torch.cat([weight, extra], dim=1)
