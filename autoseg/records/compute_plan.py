"""The compute decision of a time budget as a typed record: ``plans.json["compute"]``.

``autoseg.planning.layout.choose_layout`` makes the decision (which configurations train, on which folds, with
which variant, and why); the planner writes it into plans.json, the run reads it back to schedule training, and
``plan --show`` and the report print it. docs/design.md ("How a time budget becomes a plan and a schedule").

Example:
    >>> cost = ConfigurationCost(expected_seconds_per_iteration=0.5, expected_iterations=2400, rung=0,
    ...                          choices=("the memory-fitted plan",))
    >>> plan = ComputePlan(device="cpu", budget_seconds=1800.0, training_seconds=1200.0, target_iterations=2000,
    ...                    label_dice_at_coarser_spacing={"1.25": 0.999}, configurations=("3d_fullres",),
    ...                    folds=(0,), seconds_per_fold=1200.0, reasons=(), per_configuration={"3d_fullres": cost})
    >>> ComputePlan.from_json(plan.to_json()) == plan
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autoseg.errors import UserError


@dataclasses.dataclass(frozen=True)
class ConfigurationCost:
    """What the budget buys one configuration: predicted seconds and steps per fold, its rung and its choices."""

    expected_seconds_per_iteration: float
    expected_iterations: int
    rung: int
    choices: tuple[str, ...]
    expected_dice: float | None = None  # only where resolution was traded against steps (docs/planning.md)
    # The training recipe for this many steps where it differs from the reference's: ``TrainingSettings`` field ->
    # value, and why (``autoseg.planning.short_schedule``). Empty: the reference recipe.
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe_reasons: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfigurationCost:
        expected = data.get("expected_dice")
        recipe = data.get("recipe") or {}
        return cls(float(data["expected_seconds_per_iteration"]), int(data["expected_iterations"]), int(data["rung"]),
                   tuple(str(choice) for choice in data["choices"]), None if expected is None else float(expected),
                   dict(recipe.get("settings", {})), tuple(str(reason) for reason in recipe.get("reasons", ())))

    def to_json(self) -> dict[str, Any]:
        data = {"expected_seconds_per_iteration": self.expected_seconds_per_iteration,
                "expected_iterations": self.expected_iterations, "rung": self.rung, "choices": list(self.choices)}
        if self.expected_dice is not None:
            data["expected_dice"] = self.expected_dice
        if self.recipe:
            data["recipe"] = {"settings": dict(self.recipe), "reasons": list(self.recipe_reasons)}
        return data


@dataclasses.dataclass(frozen=True)
class ComputePlan:
    """The budget, the layout chosen for it and, per configuration, the reasoning (``plans.json["compute"]``).

    Attributes:
        device: device type the plan was fitted for (``cpu``, ``cuda``, ``mps``).
        budget_seconds: the whole run's budget, for the record (None: plans fitted to a training time alone).
        training_seconds: seconds for all training, every configuration and fold together.
        target_iterations: steps a fold should get (``autoseg.planning.layout.TARGET_ITERATIONS``).
        label_dice_at_coarser_spacing: coarsening factor (as text, ``"1.25"``) -> the worst class's round-trip Dice.
        configurations, folds: what trains.
        seconds_per_fold: training seconds of each (configuration, fold) when the plan was made.
        reasons: each decision the layout made, in words.
        per_configuration: configuration name -> its ``ConfigurationCost``.
    """

    device: str
    budget_seconds: float | None
    training_seconds: float
    target_iterations: int
    label_dice_at_coarser_spacing: dict[str, float]
    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    seconds_per_fold: float
    reasons: tuple[str, ...]
    per_configuration: dict[str, ConfigurationCost]

    @property
    def pairs(self) -> int:
        return len(self.configurations) * len(self.folds)

    def recipe_for(self, configuration_name: str) -> dict[str, Any]:
        """The training settings this plan chose for ``configuration_name`` (empty: the reference recipe)."""
        cost = self.per_configuration.get(configuration_name)
        return dict(cost.recipe) if cost is not None else {}

    @classmethod
    def from_json(cls, data: Any, *, source: str = "plans.json") -> ComputePlan:
        """The record of a ``compute`` mapping; raises ``UserError`` naming ``source`` when a key is missing."""
        try:
            return cls(
                device=str(data["device"]), budget_seconds=_float_or_none(data.get("budget_seconds")),
                training_seconds=float(data["training_seconds"]), target_iterations=int(data["target_iterations"]),
                label_dice_at_coarser_spacing={str(key): float(value) for key, value in
                                               data.get("label_dice_at_coarser_spacing", {}).items()},
                configurations=tuple(str(name) for name in data["configurations"]),
                folds=tuple(int(fold) for fold in data["folds"]), seconds_per_fold=float(data["seconds_per_fold"]),
                reasons=tuple(str(reason) for reason in data.get("reasons", ())),
                per_configuration={str(name): ConfigurationCost.from_json(cost)
                                   for name, cost in data.get("per_configuration", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            message = f"{source}: the 'compute' entry is incomplete ({error}); run `autoseg plan` again."
            raise UserError(message) from None

    def to_json(self) -> dict[str, Any]:
        """The mapping plans.json stores, keys in the order the planner has always written them."""
        return {
            "device": self.device,
            "budget_seconds": self.budget_seconds,
            "training_seconds": self.training_seconds,
            "target_iterations": self.target_iterations,
            "label_dice_at_coarser_spacing": dict(self.label_dice_at_coarser_spacing),
            "configurations": list(self.configurations),
            "folds": list(self.folds),
            "seconds_per_fold": self.seconds_per_fold,
            "reasons": list(self.reasons),
            "per_configuration": {name: cost.to_json() for name, cost in self.per_configuration.items()},
        }


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
