"""How far training has come and what the learning rate is: a decay to zero over epochs or over a wall-clock budget.

Progress is a number in [0, 1]. With a fixed number of epochs it is ``iterations done / iterations planned``;
with a time budget it is ``elapsed seconds / budget``, so the learning rate anneals to zero exactly when the
budget runs out and a short budget still ends with a low-learning-rate, well-converged model. The shape of the decay
is a schedule (``SCHEDULES``: the reference's poly, linear, cosine), optionally after a linear warm-up.
"""

from __future__ import annotations

import dataclasses
import math

from autoseg.errors import UserError

POLY_EXPONENT = 0.9
# Under a time budget (and no explicit --iterations-per-epoch) an epoch is a share of the budget, so that a 20-minute
# CPU run logs, validates and checkpoints 20 times instead of in the two 250-iteration epochs it would manage.
EPOCHS_PER_TIME_BUDGET = 20
MINIMUM_EPOCH_SECONDS = 30.0


def epoch_seconds_for_budget(budget_seconds: float) -> float:
    """Length of a time-sliced epoch: 1/20 of the budget, at least 30 s."""
    return max(MINIMUM_EPOCH_SECONDS, budget_seconds / EPOCHS_PER_TIME_BUDGET)


def poly_learning_rate(initial_learning_rate: float, progress: float, *, exponent: float = POLY_EXPONENT) -> float:
    """``lr0 * (1 - progress) ** exponent``, with progress clipped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return initial_learning_rate * (1.0 - progress) ** exponent


def linear_learning_rate(initial_learning_rate: float, progress: float) -> float:
    """``lr0 * (1 - progress)``: linear to zero, the schedule "Budgeted Training" (Li et al., ICLR 2020) found best
    for a fixed budget."""
    return initial_learning_rate * (1.0 - min(max(progress, 0.0), 1.0))


def cosine_learning_rate(initial_learning_rate: float, progress: float) -> float:
    """``lr0 * (1 + cos(pi * progress)) / 2``."""
    return initial_learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


SCHEDULES = {"poly": poly_learning_rate, "linear": linear_learning_rate, "cosine": cosine_learning_rate}


def learning_rate_at(
    initial_learning_rate: float, progress: float, *, schedule: str = "poly", warmup_fraction: float = 0.0
) -> float:
    """The learning rate at ``progress``: linear warm-up from ~0 over the first ``warmup_fraction`` of training, then
    ``schedule`` decaying to zero over the rest.

    >>> learning_rate_at(0.01, 0.5, schedule="linear")
    0.005
    >>> round(learning_rate_at(0.01, 0.025, schedule="linear", warmup_fraction=0.05), 6)
    0.005
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    if warmup_fraction > 0 and progress < warmup_fraction:
        return initial_learning_rate * max(progress, 0.0) / warmup_fraction
    decay_progress = (progress - warmup_fraction) / (1.0 - warmup_fraction) if warmup_fraction > 0 else progress
    return SCHEDULES[schedule](initial_learning_rate, decay_progress)


@dataclasses.dataclass
class TrainingProgress:
    """Counters that a resumed run must restore, and the rule that turns them into progress and a stop decision.

    Attributes:
        epochs: planned epochs (None with a time budget, where the number of epochs is whatever fits).
        iterations_per_epoch: training iterations per epoch (at most, with ``epoch_seconds``).
        time_budget_seconds: wall-clock budget for the whole training, across resumes (None: run ``epochs``).
        epoch: index of the next epoch to run (= epochs completed).
        iteration_in_epoch: iterations of the current epoch already done (non-zero only in a checkpoint written
            mid-epoch, which slow CPU epochs need so that a kill does not lose a whole epoch).
        iterations_done: training iterations completed.
        elapsed_seconds: training wall time accumulated so far, across resumes.
        epoch_seconds: time-sliced epochs: an epoch also ends once this much time has passed since it began.
        epoch_started_seconds: ``elapsed_seconds`` when the current epoch began.
    """

    epochs: int | None
    iterations_per_epoch: int
    time_budget_seconds: float | None = None
    epoch: int = 0
    iteration_in_epoch: int = 0
    iterations_done: int = 0
    elapsed_seconds: float = 0.0
    epoch_seconds: float | None = None
    epoch_started_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs is None and self.time_budget_seconds is None:
            raise UserError("give a number of epochs or a time budget.")
        if self.iterations_per_epoch < 1:
            raise UserError("iterations per epoch must be at least 1.")

    @property
    def fraction_done(self) -> float:
        if self.time_budget_seconds is not None:
            return min(1.0, self.elapsed_seconds / self.time_budget_seconds)
        return min(1.0, self.iterations_done / (self.epochs * self.iterations_per_epoch))

    @property
    def seconds_left(self) -> float | None:
        """Training time still to run: the rest of the budget, or with a number of epochs the elapsed time scaled by
        the iterations still to do (None before the first iteration)."""
        if self.time_budget_seconds is not None:
            return max(0.0, self.time_budget_seconds - self.elapsed_seconds)
        done = self.fraction_done
        return self.elapsed_seconds * (1.0 - done) / done if done > 0 else None

    @property
    def finished(self) -> bool:
        if self.time_budget_seconds is not None:
            return self.elapsed_seconds >= self.time_budget_seconds
        return self.epoch >= self.epochs

    @property
    def epoch_time_over(self) -> bool:
        """A time-sliced epoch has run its time (never true without ``epoch_seconds``)."""
        return self.epoch_seconds is not None and (
            self.elapsed_seconds - self.epoch_started_seconds >= self.epoch_seconds
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingProgress:
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})
