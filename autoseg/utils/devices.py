"""Where tensors live and how they are computed: device choice, mixed precision and determinism."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from autoseg.errors import UserError
from autoseg.utils.precision import needs_loss_scaling


def choose_device(requested: str | None = None, *, local_rank: int = 0) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1", "mps") or the best available: CUDA > MPS > CPU.

    Under DDP on CUDA each process takes the GPU of its local rank.
    """
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise UserError(f"device {requested!r} is not a valid torch device (try cpu, cuda, cuda:0 or mps).") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {requested!r} was requested but CUDA is not available on this machine.")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {requested!r} was requested but MPS is not available on this machine.")
    return device


def make_gradient_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A scaler that is active only for float16 (a disabled scaler passes gradients through unchanged)."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=needs_loss_scaling(precision))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic(seed: int) -> None:
    """Seed every generator and ask torch for deterministic kernels, so two runs give identical losses."""
    seed_everything(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def enable_fast_kernels(device: torch.device) -> None:
    """cuDNN autotuning for fixed patch sizes (non-deterministic, hence off with ``--deterministic``)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
