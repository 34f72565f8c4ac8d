"""The training recipe for a short schedule: what a budget that buys few steps changes in the reference's recipe.

The reference recipe (SGD with Nesterov momentum 0.99, poly decay, the full augmentation pipeline) is made for
250,000 GPU steps. A CPU budget buys a few thousand, and there ``benchmarks/recipe_study.py`` measured (one change at
a time, at the steps a 15-minute Hippocampus budget trains, two folds; docs/training.md "Recipe for short schedules")
which changes help. A configuration the budget gives fewer than ``SHORT_SCHEDULE_STEPS`` steps trains with
``SHORT_SCHEDULE_RECIPE``; one with more, or a plan without a budget (a GPU run), keeps the reference recipe.
The recipe is written into ``plans.json["compute"]`` per configuration with its reasons, and applied by
``autoseg run`` and ``autoseg train`` (which ``--reference-recipe`` opts out of).
"""

from __future__ import annotations

from typing import Any

# Above this many steps the study's evidence (measured at ~1,800) says nothing; the reference recipe is proven there.
SHORT_SCHEDULE_STEPS = 20_000

# ``TrainingSettings`` field -> value, each with the reason the plan records.
SHORT_SCHEDULE_RECIPE: dict[str, tuple[Any, str]] = {
    "momentum": (
        0.9,
        "SGD momentum 0.9 instead of 0.99, whose ~100-step memory slows the first hundreds of steps a short run "
        "cannot spare",
    ),
    "initial_learning_rate": (
        0.1,
        "peak learning rate 0.1, so that lr / (1 - momentum), SGD's effective step, stays the reference's",
    ),
}


def short_schedule_recipe(expected_iterations: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The training settings for a fold of ``expected_iterations`` steps, and the reasons (empty: the reference's).

    >>> short_schedule_recipe(1800)[0], short_schedule_recipe(250_000)
    ({'momentum': 0.9, 'initial_learning_rate': 0.1}, ({}, ()))
    """
    if expected_iterations >= SHORT_SCHEDULE_STEPS:
        return {}, ()
    settings = {name: value for name, (value, _) in SHORT_SCHEDULE_RECIPE.items()}
    why = f"{expected_iterations} steps is a short schedule (< {SHORT_SCHEDULE_STEPS}): "
    return settings, tuple(why + reason for _, reason in SHORT_SCHEDULE_RECIPE.values())


__all__ = ["SHORT_SCHEDULE_RECIPE", "SHORT_SCHEDULE_STEPS", "short_schedule_recipe"]
