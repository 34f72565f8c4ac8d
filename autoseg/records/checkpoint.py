"""Checkpoints as plain state dicts that load with ``torch.load(..., weights_only=True)``: no pickled objects.

A checkpoint holds only tensors, numbers, strings, lists and dicts. Random-number-generator states, which Python
and numpy express as tuples of ints and arrays, are stored as int64 tensors and rebuilt on load.

Contents::

    {"format": "autoseg-checkpoint-1", "network": state_dict, "optimizer": state_dict, "gradient_scaler": state_dict,
     "progress": TrainingProgress.to_dict(), "log": [epoch records], "ema_pseudo_dice": float | None,
     "best_ema_pseudo_dice": float | None, "random_states": {...}, "configuration_name": str,
     "configuration": dict, "settings": dict, "autoseg_version": str}
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg import __version__
from autoseg.errors import UserError
from autoseg.utils.files import atomic_torch_save, read_json

CHECKPOINT_FORMAT = "autoseg-checkpoint-1"
LATEST_CHECKPOINT = "checkpoint_latest.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
FINAL_CHECKPOINT = "checkpoint_final.pt"


def capture_random_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, as tensors and numbers."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": torch.tensor(python_internal, dtype=torch.int64),
        "python_version": int(python_version),
        "python_gauss": python_gauss,
        "numpy_keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
        "numpy_name": str(numpy_name),
        "numpy_position": int(numpy_position),
        "numpy_has_gauss": int(numpy_has_gauss),
        "numpy_gauss": float(numpy_gauss),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    random.setstate(
        (states["python_version"], tuple(int(v) for v in states["python"].tolist()), states["python_gauss"])
    )
    np.random.set_state(
        (
            states["numpy_name"],
            states["numpy_keys"].numpy().astype(np.uint32),
            states["numpy_position"],
            states["numpy_has_gauss"],
            states["numpy_gauss"],
        )
    )
    torch.random.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available() and len(states["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


def save_checkpoint(path: str | os.PathLike[str], content: dict[str, Any]) -> None:
    """Write ``content`` (plus format tag and version) atomically; a killed run leaves the previous file intact."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "autoseg_version": __version__, **content}, path)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``): a file that needs pickle is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, OSError or EOFError for bad files
        # The first line only: torch's weights-only refusal goes on for a paragraph about trusting the source.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0].rstrip(".")
        raise UserError(
            f"checkpoint {path} cannot be read as a weights-only torch file ({reason}); it is cut short, damaged or "
            "holds pickled objects: replace it, or delete it and train the fold again."
        ) from None


def network_weights_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network state dict inside an autoseg checkpoint, or the checkpoint itself if it is a bare state dict.

    A ``module.`` prefix left by DistributedDataParallel is removed.
    """
    weights = checkpoint.get("network", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise UserError("the checkpoint holds no network weights.")
    return {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in weights.items()
        if isinstance(value, torch.Tensor)
    }


def recorded_checkpoint_sha256(record_path: str | os.PathLike[str]) -> str | None:
    """The ``checkpoint_sha256`` a JSON record made for one checkpoint names (a fold's ``adaptation.json``): a record
    whose checkpoint was since replaced no longer applies. None when the record is absent or names none."""
    record_path = Path(record_path)
    if not record_path.is_file():
        return None
    record = read_json(record_path)
    return record.get("checkpoint_sha256") if isinstance(record, dict) else None
