"""Data-parallel training across processes: detect a ``torchrun`` launch, join the process group, sync results.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them training runs in one process. The
backend is NCCL on CUDA and gloo elsewhere. Every rank trains on its own share of the batch, DDP averages the
gradients, and only rank 0 writes files or prints. At the end every rank's weights fingerprint is gathered, so
``training_summary.json`` shows that all ranks finished with the weights rank 0 saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as torch_distributed

from autoseg.errors import UserError


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Who this process is in a (possibly one-process) training job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def detect_distributed_context() -> DistributedContext:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` as set by ``torchrun``; a plain launch is a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistributedContext(world_size=world_size, rank=rank, local_rank=local_rank)


def start_process_group(context: DistributedContext, device: torch.device) -> None:
    """Join the process group (once); NCCL for CUDA devices, gloo for CPU."""
    if not context.enabled or torch_distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_distributed.init_process_group(backend=backend, world_size=context.world_size, rank=context.rank)


def stop_process_group() -> None:
    if torch_distributed.is_initialized():
        torch_distributed.destroy_process_group()


def split_batch_size(batch_size: int, context: DistributedContext) -> int:
    """This rank's share of the global batch; every rank needs at least one sample."""
    if batch_size < context.world_size:
        raise UserError(
            f"the batch size {batch_size} is smaller than the number of processes {context.world_size}; "
            "use fewer processes or a configuration with a larger batch."
        )
    base, remainder = divmod(batch_size, context.world_size)
    return base + (1 if context.rank < remainder else 0)


def split_forced_samples(batch_size: int, forced: int, context: DistributedContext) -> int:
    """How many of the global batch's ``forced`` foreground samples (its last ones) fall into this rank's share.

    Ranks hold consecutive slices of the global batch (``split_batch_size``), so the forced samples go to the last
    ranks, and the global batch keeps exactly the single-process count, as in the reference.
    """
    first = sum(split_batch_size(batch_size, dataclasses.replace(context, rank=rank)) for rank in range(context.rank))
    last = first + split_batch_size(batch_size, context)
    return max(0, last - max(first, batch_size - forced))


def sum_across_processes(values: Sequence[float], context: DistributedContext) -> list[float]:
    """Element-wise sum over ranks (a no-op in one process)."""
    if not context.enabled:
        return [float(v) for v in values]
    backend_device = "cuda" if torch_distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=backend_device)
    torch_distributed.all_reduce(tensor, op=torch_distributed.ReduceOp.SUM)
    return tensor.cpu().tolist()


def value_of_main_process(value: float, context: DistributedContext) -> float:
    """Rank 0's ``value`` on every rank: time-based schedules must use one clock, or the ranks' learning rates (and
    hence their weights) would drift apart."""
    if not context.enabled:
        return float(value)
    return sum_across_processes([float(value) if context.is_main_process else 0.0], context)[0]


def any_process_says(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if it is true on any rank (so all ranks stop on the same iteration)."""
    if not context.enabled:
        return flag
    return sum_across_processes([1.0 if flag else 0.0], context)[0] > 0


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of the model's state dict: every tensor's name, dtype, shape and bytes, in state-dict order.

    Equal fingerprints mean bit-identical weights, whichever device holds them.
    """
    return state_dict_fingerprint(unwrap_model(model).state_dict())


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``weights_fingerprint`` of a state dict, e.g. ``checkpoint["network"]`` as saved."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{values.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprints_of_all_processes(fingerprint: str, context: DistributedContext) -> list[str]:
    """Every rank's hex fingerprint, in rank order (a collective: every rank must call it)."""
    if not context.enabled:
        return [fingerprint]
    backend_device = "cuda" if torch_distributed.get_backend() == "nccl" else "cpu"
    local = torch.tensor(list(bytes.fromhex(fingerprint)), dtype=torch.uint8, device=backend_device)
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    torch_distributed.all_gather(gathered, local)
    return [bytes(part.cpu().tolist()).hex() for part in gathered]


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself."""
    if not context.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
