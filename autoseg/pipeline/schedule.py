"""How ``autoseg run`` spends a total time budget: which configurations and folds it trains, and for how long.

A budget covers the whole run, planning to report. What is left after preprocessing, less a share kept for
validation prediction, model selection and the report, is split evenly over the (configuration, fold) pairs. When
the throughput model says a fold would get fewer than ``MINIMUM_USEFUL_ITERATIONS`` steps, the run trains fewer
things rather than everything badly: first only the primary configuration (``3d_fullres``, else ``2d``), then fewer
folds, down to one. Configurations or folds the user named are never dropped. Each choice is printed with its reason.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence

from autoseg.records.plans import Plans

DEFAULT_CPU_BUDGET_SECONDS = 3600.0  # applied on a machine without a GPU when no budget and no epochs are given
FULL_SCHEDULE_ITERATIONS = 1000 * 250  # the reference schedule: 1000 epochs of 250 steps
MINIMUM_USEFUL_ITERATIONS = 500  # fewer steps than this per fold leave a 2-core CPU run far from converged
AFTER_TRAINING_SHARE = 0.12  # of the budget left after preprocessing: validation prediction, selection, report
AFTER_TRAINING_FIXED_SECONDS = 60.0  # model selection, post-processing and the report, beyond predicting cases
AFTER_TRAINING_SAFETY = 1.5  # times the predicted seconds of validation prediction that training leaves free

SecondsPerIteration = Callable[[str], "float | None"]  # configuration name -> predicted seconds per training step


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """The configurations and folds to train, seconds per fold (None: no budget), and why."""

    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    seconds_per_fold: float | None
    budget_seconds: float | None
    reasons: tuple[str, ...] = ()

    @property
    def pairs(self) -> int:
        return len(self.configurations) * len(self.folds)


def primary_configuration(plans: Plans) -> str:
    """The configuration a budget that cannot pay for all keeps: ``3d_fullres`` for 3D data, else the first planned."""
    return "3d_fullres" if "3d_fullres" in plans.configurations else plans.names[0]


def plan_run_schedule(
    plans: Plans,
    configurations: Sequence[str],
    folds: Sequence[int],
    *,
    budget_seconds: float | None,
    elapsed_seconds: float,
    seconds_per_iteration: SecondsPerIteration,
    configurations_named: bool,
    folds_named: bool,
) -> RunSchedule:
    """Fit the training of ``configurations`` x ``folds`` into what is left of ``budget_seconds`` (see module doc)."""
    if budget_seconds is None:
        return RunSchedule(tuple(configurations), tuple(folds), None, None)
    training_seconds = max(0.0, (budget_seconds - elapsed_seconds) * (1 - AFTER_TRAINING_SHARE))
    chosen, reasons = list(configurations), []
    if not configurations_named and len(chosen) > 1 and _too_few_steps(chosen, len(folds), training_seconds,
                                                                        seconds_per_iteration):
        primary = primary_configuration(plans)
        reasons.append(f"training only {primary}: the budget cannot give every planned configuration "
                       f"{MINIMUM_USEFUL_ITERATIONS} steps per fold")
        chosen = [primary]
    chosen_folds = list(folds)
    if not folds_named and len(chosen_folds) > 1:
        affordable = _affordable_folds(chosen, len(chosen_folds), training_seconds, seconds_per_iteration)
        if affordable < len(chosen_folds):
            enough = not _too_few_steps(chosen, affordable, training_seconds, seconds_per_iteration)
            why = (f"each gets at least {MINIMUM_USEFUL_ITERATIONS} steps that way" if enough else
                   f"even one fold gets fewer than {MINIMUM_USEFUL_ITERATIONS} steps; a larger --time-budget buys more")
            reasons.append(f"training {affordable} of {len(chosen_folds)} folds: {why}")
            chosen_folds = chosen_folds[:affordable]
    per_fold = training_seconds / (len(chosen) * len(chosen_folds))
    return RunSchedule(tuple(chosen), tuple(chosen_folds), per_fold, budget_seconds, tuple(reasons))


def _too_few_steps(configurations: Sequence[str], folds: int, training_seconds: float,
                   seconds_per_iteration: SecondsPerIteration) -> bool:
    per_fold = training_seconds / (len(configurations) * folds)
    rates = [seconds_per_iteration(name) for name in configurations]
    return any(rate is not None and per_fold / rate < MINIMUM_USEFUL_ITERATIONS for rate in rates)


def _affordable_folds(configurations: Sequence[str], folds: int, training_seconds: float,
                      seconds_per_iteration: SecondsPerIteration) -> int:
    """The most folds (at least one) for which every configuration still gets the minimum number of steps."""
    for count in range(folds, 1, -1):
        if not _too_few_steps(configurations, count, training_seconds, seconds_per_iteration):
            return count
    return 1


def full_schedule_seconds(configurations: Sequence[str], folds: int, seconds_per_iteration: SecondsPerIteration,
                          iterations: int = FULL_SCHEDULE_ITERATIONS) -> float | None:
    """Training time of the reference schedule for every configuration and fold, or None when a rate is unknown."""
    rates = [seconds_per_iteration(name) for name in configurations]
    if any(rate is None for rate in rates):
        return None
    return sum(rates) * folds * iterations


def describe_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``58 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def clock_time_in(seconds: float) -> str:
    """The wall-clock time ``seconds`` from now, as HH:MM."""
    return (datetime.datetime.now() + datetime.timedelta(seconds=seconds)).strftime("%H:%M")


def after_training_reserve(left_seconds: float, case_seconds: Sequence[tuple[int, float | None]]) -> float:
    """Seconds of ``left_seconds`` that training leaves for the work after it: predicting every fold's validation
    cases with each configuration, model selection, post-processing and the report.

    ``case_seconds`` holds, per trained (configuration, fold), its number of cases predicted after training (the
    validation cases and those recorded for test-time standardisation) and the predicted seconds of one
    (``autoseg.pipeline.machine_benchmark.case_prediction_seconds_estimator``). The reserve is ``AFTER_TRAINING_SAFETY``
    times that prediction plus ``AFTER_TRAINING_FIXED_SECONDS``, never more than ``AFTER_TRAINING_SHARE`` of what is
    left; without a prediction it is that share.
    """
    share = AFTER_TRAINING_SHARE * max(0.0, left_seconds)
    if any(seconds is None for _, seconds in case_seconds):
        return share
    predicted = sum(cases * float(seconds or 0.0) for cases, seconds in case_seconds)
    return min(share, AFTER_TRAINING_FIXED_SECONDS + AFTER_TRAINING_SAFETY * predicted)
