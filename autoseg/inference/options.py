"""How to predict, whatever the model: mirroring, sliding-window step, batch, precision, device, threads, adaptation.

One frozen record travels from the command line to the sliding window instead of the same keyword arguments repeated
in every loader and predictor.

Example:
    >>> options = PredictionOptions(tta=False, device="cpu")
    >>> options.step_size, options.batch_size, options.precision
    (0.5, 2, 'auto')
"""

from __future__ import annotations

import dataclasses

import torch

from autoseg.utils.devices import choose_device


@dataclasses.dataclass(frozen=True)
class PredictionOptions:
    """Options of prediction that leave the model's choice (configurations, folds, checkpoint) alone.

    Attributes:
        tta: test-time mirroring over every spatial axis (8 passes per patch in 3D, 4 in 2D).
        step_size: sliding-window step as a fraction of the patch (0.5 = half-patch overlap).
        batch_size: patches per forward pass.
        precision: ``auto`` (float16 autocast on CUDA, bfloat16 on CPUs with native bfloat16, else float32),
            ``float32``, ``float16``, ``bfloat16``. ONNX networks always run in float32.
        device: ``auto`` (CUDA > MPS > CPU), ``cpu``, ``cuda``, ``cuda:1``...; ONNX networks always run on the CPU.
        threads: onnxruntime intra-op threads per network (torch uses its global thread count).
        adapt: a test-time appearance adaptation method (``standardise``, ``normaliser``, ``adversarial``) or None.
        adaptation_seed: random seed of test-time adaptation.
        quality: estimate every case's quality (``autoseg.inference.quality``) and write ``quality.csv``.
        flag_below: flag cases whose expected Dice is below this (None: the model's ``flag_below``).
    """

    tta: bool = True
    step_size: float = 0.5
    batch_size: int = 2
    precision: str = "auto"
    device: str = "auto"
    threads: int = 1
    adapt: str | None = None
    adaptation_seed: int = 0
    quality: bool = True
    flag_below: float | None = None

    def torch_device(self) -> torch.device:
        """The device to run on: ``device``, with ``auto`` resolved (CUDA > MPS > CPU)."""
        device = str(self.device)  # a torch.device given for ``device`` works too
        return choose_device(None if device == "auto" else device)
