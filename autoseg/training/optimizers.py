"""Optimisers by name: a small registry so a different optimiser is an option, not a subclass."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

DEFAULT_INITIAL_LEARNING_RATE = 1e-2
DEFAULT_WEIGHT_DECAY = 3e-5
DEFAULT_MOMENTUM = 0.99
DEFAULT_GRADIENT_CLIP_NORM = 12.0


def sgd_nesterov(
    parameters: Iterable[torch.nn.Parameter],
    *,
    learning_rate: float = DEFAULT_INITIAL_LEARNING_RATE,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    momentum: float = DEFAULT_MOMENTUM,
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (0.99: the proven default for U-Nets trained from scratch with poly decay)."""
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    *,
    learning_rate: float = 1e-3,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    momentum: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW, for fine-tuning pretrained weights where SGD's large momentum can wreck what was learned (``momentum``,
    SGD's, is ignored)."""
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd_nesterov": sgd_nesterov, "adamw": adamw}


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
