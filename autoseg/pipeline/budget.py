"""The run's time budget, owned in one place: the clock, the shares, the CPU default, the seconds for planning, the
reserve after training and each fold's seconds.

How a budget becomes a plan and a schedule (docs/design.md, "How a time budget becomes a plan and a schedule"):

1. ``RunBudget.start`` starts the clock when the command starts; on a CPU with no limit at all
   ``apply_cpu_default`` gives the run ``DEFAULT_CPU_BUDGET_SECONDS`` and says so.
2. Planning asks ``compute_for`` for a ``ComputeBudget``: the machine is measured (cached,
   ``autoseg.pipeline.machine_benchmark``), and the training share is what is left then, less
   ``PREPROCESSING_SHARE`` and ``AFTER_TRAINING_SHARE``. ``autoseg.planning.layout.choose_layout`` decides from it
   which configurations train, on which folds, with which variant: a ``records.ComputePlan`` written into plans.json.
   Plans kept from an earlier run are laid out by the same ``choose_layout`` (``layout_kept_plans``).
3. Before training, ``after_training_reserve`` keeps back what validation prediction, model selection and the report
   are predicted to need; each fold then trains for ``fold_seconds``: what is left, shared by the folds still to train.
4. After model selection, optional work (test-time standardisation) runs only when ``affords`` says it fits.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import torch

from autoseg.fingerprint.label_round_trip import round_trip_dice_per_class
from autoseg.pipeline.machine_benchmark import MachineCosts, machine_costs
from autoseg.planning.layout import ComputeBudget
from autoseg.records.dataset import RawDataset
from autoseg.records.fingerprint import Fingerprint
from autoseg.records.plans import Configuration
from autoseg.utils.durations import clock_time_in, describe_duration, parse_time_budget

DEFAULT_CPU_BUDGET_SECONDS = 3600.0  # applied on a machine without a GPU when no budget and no epochs are given
FULL_SCHEDULE_ITERATIONS = 1000 * 250  # the reference schedule: 1000 epochs of 250 steps
PREPROCESSING_SHARE = 0.05  # of the budget left at planning time, expected for preprocessing (corrected later)
AFTER_TRAINING_SHARE = 0.12  # of the budget left: validation prediction, selection, report
AFTER_TRAINING_FIXED_SECONDS = 60.0  # model selection, post-processing and the report, beyond predicting cases
AFTER_TRAINING_SAFETY = 1.5  # times the predicted seconds of validation prediction that training leaves free
OPTIONAL_WORK_SHARE = 0.5  # optional work after model selection may use at most this share of what is left

ComputeFor = Callable[[RawDataset, Fingerprint], ComputeBudget]  # (dataset, fingerprint) -> the budget to plan for


@dataclasses.dataclass
class RunBudget:
    """The run's clock and total budget in seconds (None: no budget), and every rule that spends it."""

    started: float
    budget_seconds: float | None

    @classmethod
    def start(cls, time_budget: str | None) -> RunBudget:
        """The clock started now, with the budget the user wrote (``--time-budget 20m``), if any."""
        return cls(time.monotonic(), parse_time_budget(time_budget) if time_budget else None)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def seconds_left(self) -> float | None:
        """What is left of the budget (never negative); None without a budget."""
        return None if self.budget_seconds is None else max(0.0, self.budget_seconds - self.elapsed)

    def apply_cpu_default(self, device: torch.device, *, limited: bool) -> None:
        """On a CPU with no budget and no other limit (``limited``: epochs or a time per fold), give the run
        ``DEFAULT_CPU_BUDGET_SECONDS`` and say how to choose another."""
        if self.budget_seconds is not None or limited or device.type != "cpu":
            return
        self.budget_seconds = DEFAULT_CPU_BUDGET_SECONDS
        print(f"no GPU and no time limit given: applying the default budget of "
              f"{describe_duration(DEFAULT_CPU_BUDGET_SECONDS)} for the whole run (choose another with "
              "--time-budget, e.g. --time-budget 8h, or train fixed epochs with --epochs N)")

    def training_seconds(self) -> float:
        """Seconds for all training, as planned now: what is left, less preprocessing and the after-training share."""
        return float(self.seconds_left or 0.0) * (1 - AFTER_TRAINING_SHARE - PREPROCESSING_SHARE)

    def after_training_reserve(self, case_seconds: Sequence[tuple[int, float | None]]) -> float:
        """Seconds of what is left that training leaves for the work after it: predicting every fold's validation
        cases with each configuration, model selection, post-processing and the report.

        ``case_seconds`` holds, per (configuration, fold) to train, its number of cases predicted after training and
        the predicted seconds of one. The reserve is ``AFTER_TRAINING_SAFETY`` times that prediction plus
        ``AFTER_TRAINING_FIXED_SECONDS``, never more than ``AFTER_TRAINING_SHARE`` of what is left; without a
        prediction it is that share.
        """
        share = AFTER_TRAINING_SHARE * max(0.0, float(self.budget_seconds or 0.0) - self.elapsed)
        if any(seconds is None for _, seconds in case_seconds):
            return share
        predicted = sum(cases * float(seconds or 0.0) for cases, seconds in case_seconds)
        return min(share, AFTER_TRAINING_FIXED_SECONDS + AFTER_TRAINING_SAFETY * predicted)

    def fold_seconds(self, reserve: float, folds_to_train: int) -> float:
        """The next fold's training seconds: what is left now, less ``reserve``, shared by the folds still to train
        (a slow preprocessing or a fold that ran long is paid for by the later folds, not by the end of the run)."""
        return max(0.0, float(self.budget_seconds or 0.0) - self.elapsed - reserve) / max(1, folds_to_train)

    def affords(self, needed_seconds: float | None) -> bool:
        """Optional work of ``needed_seconds`` (None: unknown) fits: no budget, or at most ``OPTIONAL_WORK_SHARE``
        of what is left."""
        if self.budget_seconds is None:
            return True
        return needed_seconds is not None and needed_seconds <= float(self.seconds_left or 0.0) * OPTIONAL_WORK_SHARE

    def progress_line(self, *, done: int, total: int) -> str:
        """``fold 3/10 done after 14 min; ...`` with the expected finish from the mean pace so far."""
        line = f"fold {done}/{total} done after {describe_duration(self.elapsed)}"
        if self.budget_seconds is not None:
            left = float(self.seconds_left or 0.0)
            return f"{line}; the budget ends at {clock_time_in(left)} ({describe_duration(left)} left)"
        remaining = self.elapsed / done * (total - done)
        return f"{line}; expected to finish training at about {clock_time_in(remaining)}"

    def final_line(self) -> str:
        used = f"finished in {describe_duration(self.elapsed)}"
        if self.budget_seconds is None:
            return f"{used} (no time budget)"
        share = self.elapsed / self.budget_seconds
        return f"{used} of the {describe_duration(self.budget_seconds)} budget ({share:.0%})"

    def compute_for(self, device: torch.device, precision: str, *, folds: Sequence[int] = (0, 1, 2, 3, 4),
                    folds_named: bool = False, configurations: Sequence[str] | None = None,
                    say: Callable[[str], None] = print) -> ComputeFor:
        """What planning calls, once the dataset is fingerprinted, to learn the budget it plans for: the machine is
        measured first, then the training share of what is left (``training_seconds``)."""

        def compute(dataset: RawDataset, fingerprint: Fingerprint) -> ComputeBudget:
            costs = machine_costs(dataset, device, precision, say=say)
            budget = self.layout_budget(costs, folds=folds, folds_named=folds_named, configurations=configurations)
            round_trip = functools.partial(round_trip_dice_per_class, dataset, is_2d=bool(fingerprint.is_2d))
            names = {value: name for name, value in dataset.labels.items() if isinstance(value, int)}
            return dataclasses.replace(budget, label_round_trip=round_trip, class_names=names)

        return compute

    def layout_budget(self, costs: MachineCosts, *, folds: Sequence[int], folds_named: bool,
                      configurations: Sequence[str] | None) -> ComputeBudget:
        """The ``ComputeBudget`` of what is left now on this machine; without a label round trip, which only fresh
        plans need (``compute_for`` adds it), so also the budget plans kept from an earlier run are laid out with."""
        return ComputeBudget(
            training_seconds=self.training_seconds(), seconds_per_iteration=_configuration_rate(costs),
            device=costs.device.type, label_round_trip=_no_round_trip, budget_seconds=self.budget_seconds,
            folds=tuple(folds), folds_named=folds_named,
            configurations=tuple(configurations) if configurations else None,
        )


def whole_run_seconds(training_seconds: float) -> float:
    """The budget of a whole run whose planned training share (``RunBudget.training_seconds`` at the start) is
    ``training_seconds``."""
    return training_seconds / (1 - AFTER_TRAINING_SHARE - PREPROCESSING_SHARE)


def full_schedule_seconds(configurations: Sequence[Configuration], folds: int, costs: MachineCosts) -> float:
    """Training time of the reference schedule (``FULL_SCHEDULE_ITERATIONS`` steps) for every configuration and
    fold on this machine."""
    return sum(costs.step_seconds(configuration) for configuration in configurations) * folds * FULL_SCHEDULE_ITERATIONS


def _configuration_rate(costs: MachineCosts) -> Callable[[str, dict], float]:
    """The planner's view of the step cost: (configuration name, configuration as in plans.json) -> seconds."""
    return lambda name, configuration: costs.step_seconds(Configuration.from_json(name, configuration))


def _no_round_trip(_spacing: list[float], _factors: Sequence[float]) -> dict[float, float]:
    return {}
