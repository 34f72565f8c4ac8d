"""Which arithmetic the network runs in, for training and inference alike.

``auto`` picks the fastest precision that is known to train and predict as well as float32:

* CUDA: float16 autocast (with loss scaling in training), the usual mixed precision.
* CPU with native bfloat16 instructions (AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire Rapids): bfloat16
  autocast (speed and accuracy against float32, measured: docs/training.md, "The recipe" and "bfloat16
  against float32 at equal iterations").
* Any other CPU, and MPS: float32 (bfloat16 is emulated there and slower than float32).

Autocast keeps the weights, the optimiser state and every reduction (losses, softmax sums, Gaussian accumulation)
in float32; only convolution inputs and outputs are rounded.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

PRECISIONS = ("auto", "float32", "float16", "bfloat16")

# Set to 0 to keep CPU runs in float32 even where bfloat16 is native (or to 1 to force it, e.g. for tests).
CPU_BFLOAT16_VARIABLE = "AUTOSEG_CPU_BFLOAT16"


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """True when this CPU executes bfloat16 dot products in hardware (AVX512-BF16 or AMX-BF16)."""
    override = os.environ.get(CPU_BFLOAT16_VARIABLE)
    if override in ("0", "1"):
        return override == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:  # not Linux: ask oneDNN, which is conservative about emulated bfloat16
        with contextlib.suppress(Exception):
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.mkldnn.is_available()
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()


def resolve_precision(requested: str, device: torch.device) -> str:
    """``requested`` with ``auto`` replaced by the fastest safe choice for ``device`` (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return "bfloat16"
    return "float32"


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context that runs the network in ``precision`` (``auto`` resolved first) on ``device``."""
    precision = resolve_precision(precision, device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, precision))


def needs_loss_scaling(precision: str) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range and does not."""
    return precision == "float16"


def add_precision_argument(parser) -> None:
    """The ``--precision`` option shared by ``train``, ``predict`` and ``run``."""
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="network arithmetic: auto = float16 on CUDA, bfloat16 on CPUs with native bfloat16 (AVX512-BF16, "
             f"AMX; set {CPU_BFLOAT16_VARIABLE}=0 to opt out), else float32",
    )
