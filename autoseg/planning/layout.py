"""Fit the plans to a time budget: the most accurate model the user's machine can train in the user's time.

Memory alone (``patch_and_batch``) decides what *can* run; a time budget decides what is *worth* running. Given the
seconds available for training and a throughput model (``autoseg.planning.step_cost``, measured on the machine),
each configuration walks down a ladder of cheaper variants and keeps the first that the budget can train for
``TARGET_ITERATIONS`` steps. The rungs, most faithful to the reference plan first:

0. the memory-fitted plan itself (what a GPU without a budget trains);
1. a coarser target spacing, finest first, but only spacings at which the training labels survive a round trip to
   the coarser grid with Dice >= ``RESOLUTION_DICE_FLOOR`` for every class (``autoseg.fingerprint.resolution``),
   and whose median image keeps ``MINIMUM_MEDIAN_VOXELS`` per axis. Predictions are still written on the input's
   grid; only the network sees the coarser one;
2. a network half as wide (16 features in the first stage instead of 32: about a quarter of the arithmetic) at the
   coarsest allowed spacing; a narrower network loses less than a smaller batch, which sees fewer examples per step;
3. that network with smaller batches (halving, down to ``MINIMUM_BATCH_SIZE``).

When no rung reaches the target the cheapest variant is kept and the reasons say so. The run's layout (which
configurations and how many folds) is chosen first: every configuration on every fold when each can still train
at rung 0 or 1, else the configuration whose fit is least degraded on one fold (one that reaches the target steps
before one that does not, then one that keeps its network before a narrowed one; among equals ``3d_fullres``,
then the lower rung), on as many folds as leave that variant unchanged with ``SPLIT_FOLD_ITERATIONS`` steps each
(one fold when even that does not). Between two narrowed fits the rung does not decide: a narrowed 2d fit that keeps
its batch does not outrank ``3d_fullres`` on a smaller one (measured: docs/planning.md, "Compute-aware plans"). Among
narrowed variants of one configuration, one short of ``SPLIT_FOLD_ITERATIONS`` steps gives way to a smaller batch
that reaches them, else to the smallest (``choose_variant``).

What the user named constrains the layout: named folds are the folds (``ComputeBudget.folds_named``), named
configurations all train (``ComputeBudget.configurations``), a named cascade stage on every fold. Plans kept from an
earlier run are laid out by the same ``choose_layout``, each kept configuration a ladder of one rung
(``layout_kept_plans``). The decision is a ``autoseg.records.compute_plan.ComputePlan``; how the budget's seconds are
found is ``autoseg.pipeline.budget``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from autoseg.planning.expected_accuracy import expected_dice
from autoseg.planning.short_schedule import short_schedule_recipe
from autoseg.planning.topology import features_per_stage
from autoseg.records.compute_plan import ComputePlan, ConfigurationCost
from autoseg.records.plans import Plans
from autoseg.records.training_batch import MINIMUM_BATCH_SIZE, device_batch_size
from autoseg.transforms.resampling import coarsened_spacing

TARGET_ITERATIONS = 2000  # steps a fold should get: below this a 2-core CPU run is far from what its plan can reach
# A further fold only while every fold keeps this many steps: steps past the target still pay (docs/planning.md).
SPLIT_FOLD_ITERATIONS = 2 * TARGET_ITERATIONS
RESOLUTION_DICE_FLOOR = 0.995  # at most half a Dice point may be lost to a coarser grid
COARSENING_FACTORS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
MINIMUM_MEDIAN_VOXELS = {2: 48, 3: 24}
NARROW_BASE_FEATURES = 16
NARROW_RUNG = 2  # rungs from here on train the narrowed network
FULL_QUALITY_RUNG = 1  # rungs 0 and 1 train the plan's network as planned (at most half a Dice point of grid loss)
TRADE_RUNG = 4  # time-fitted variants that may lose label detail, chosen by expected Dice (``expected_accuracy``)
MEMORY_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125)  # of the memory budget: smaller patches on the same path
MINIMUM_PATCH_COVERAGE = 0.25  # of the median image's voxels, as the reference's 3d_lowres rule asks of its patch
CASCADE_CONFIGURATIONS = ("3d_lowres", "3d_cascade_fullres")

SecondsPerIteration = Callable[[str, dict], float]  # (configuration name, full configuration dict) -> seconds
# (configuration name, spacing, share of the memory budget) -> the memory-fitted configuration dict
Refit = Callable[[str, list[float], float], dict]
PerClassDice = dict[float, dict[int, float]]  # coarsening factor -> label value -> round-trip Dice


@dataclasses.dataclass(frozen=True)
class ComputeBudget:
    """What the planner needs to know about the user's time and machine."""

    training_seconds: float  # for all training of the run, every configuration and fold together
    seconds_per_iteration: SecondsPerIteration
    device: str
    # (full-resolution spacing in the images' axis order, factors) -> factor -> label value: round-trip Dice
    label_round_trip: Callable[[list[float], Sequence[float]], PerClassDice]
    max_voxels_per_step: int | None = None  # a CPU step's batch cap (None: ``records.training_batch``'s)
    budget_seconds: float | None = None  # the whole run's, for the record
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the folds a layout may use, in order
    folds_named: bool = False  # the user named ``folds``: the layout trains exactly those
    configurations: tuple[str, ...] | None = None  # configurations the user named: the layout trains all of them
    class_names: dict[int, str] = dataclasses.field(default_factory=dict)  # label value -> name, for the reasons


@dataclasses.dataclass(frozen=True)
class Variant:
    """One candidate of a configuration, its predicted cost and how far it is from the reference plan."""

    configuration: dict
    rung: int
    seconds_per_iteration: float
    choices: tuple[str, ...]
    label_dice: tuple[tuple[int, float], ...] = ()  # per class, the round-trip Dice of its grid (empty: full grid)

    def iterations(self, seconds: float) -> int:
        return int(seconds / self.seconds_per_iteration)

    def expected_dice(self, seconds: float) -> float:
        return expected_dice(dict(self.label_dice), self.iterations(seconds))


def allowed_factors(resolution_dice: dict[float, float], median_shape: Sequence[float], dimension: int) -> list[float]:
    """Coarsening factors whose label round trip keeps ``RESOLUTION_DICE_FLOOR`` and whose image stays large."""
    allowed = []
    for factor in COARSENING_FACTORS:
        if resolution_dice.get(factor, 0.0) < RESOLUTION_DICE_FLOOR:
            break
        if min(median_shape[-dimension:]) / factor < MINIMUM_MEDIAN_VOXELS[dimension]:
            break
        allowed.append(factor)
    return allowed


def worst_class(per_class: PerClassDice) -> dict[float, float]:
    """Per factor, the round-trip Dice of the class that loses most."""
    return {factor: min(classes.values(), default=1.0) for factor, classes in per_class.items()}


def ladder(name: str, reference: dict, refit: Refit, budget: ComputeBudget, per_class: PerClassDice) -> list[Variant]:
    """Every variant of one configuration, in order of preference (see the module docstring); when none of the
    faithful rungs reaches ``TARGET_ITERATIONS`` even with the whole budget, the trade rung follows."""
    dimension = reference["dimension"]
    rate = budget.seconds_per_iteration
    reference = _capped(reference, budget)
    variants = [Variant(reference, 0, rate(name, reference), ("the memory-fitted plan",))]
    coarsest, coarse_choice, kept = reference, (), ()
    for factor in allowed_factors(worst_class(per_class), reference["median_shape"], dimension):
        spacing = coarsened_spacing(reference["spacing"], factor, keep_first=dimension == 2)
        coarsest, kept = _capped(refit(name, spacing, 1.0), budget), tuple(per_class[factor].items())
        coarse_choice = (f"spacing {_mm(spacing[-dimension:])} ({factor:g}x the median): the labels keep Dice "
                         f"{min(per_class[factor].values(), default=1.0):.3f} on that grid",)
        variants.append(Variant(coarsest, 1, rate(name, coarsest), coarse_choice, kept))
    narrow = _narrow(coarsest)
    narrow_choice = (*coarse_choice, f"{NARROW_BASE_FEATURES} features in the first stage")
    variants.append(Variant(narrow, 2, rate(name, narrow), narrow_choice, kept))
    for batch in _smaller_batches(coarsest["batch_size"]):
        candidate = {**narrow, "batch_size": batch}
        variants.append(Variant(candidate, 3, rate(name, candidate), (*narrow_choice, f"batch {batch}"), kept))
    if all(variant.iterations(budget.training_seconds) < TARGET_ITERATIONS for variant in variants):
        variants += trade_variants(name, reference, refit, budget, per_class)
    return variants


def trade_variants(name: str, reference: dict, refit: Refit, budget: ComputeBudget,
                   per_class: PerClassDice) -> list[Variant]:
    """The trade rung: at every grid from the plan's to the coarsest that keeps ``MINIMUM_MEDIAN_VOXELS`` (a tiny
    class may lose detail), the memory-fitted patch of each share of the memory budget (smaller patches on the same
    path) whose patch still covers ``MINIMUM_PATCH_COVERAGE`` of the median image, with the narrowed network and the
    smallest batch: the ``3d_lowres``-like configurations a CPU budget can train. Chosen by expected Dice."""
    dimension, rate = reference["dimension"], budget.seconds_per_iteration
    variants = []
    for factor in (1.0, *COARSENING_FACTORS):
        if min(reference["median_shape"][-dimension:]) / factor < MINIMUM_MEDIAN_VOXELS[dimension]:
            break
        spacing = coarsened_spacing(reference["spacing"], factor, keep_first=dimension == 2)
        kept, patches = per_class.get(factor, {}), []
        for scale in MEMORY_SCALES:
            fitted = refit(name, spacing, scale)
            if not _covers_enough(fitted):
                break
            if fitted["patch_size"] in patches:  # the smallest patch of the path: a smaller share changes nothing
                continue
            patches.append(fitted["patch_size"])
            candidate = {**_narrow(fitted), "batch_size": MINIMUM_BATCH_SIZE}
            choices = (*_grid_choice(spacing[-dimension:], factor, kept, budget.class_names),
                       f"patch {'x'.join(str(size) for size in fitted['patch_size'])}",
                       f"{NARROW_BASE_FEATURES} features in the first stage", f"batch {MINIMUM_BATCH_SIZE}")
            variants.append(Variant(candidate, TRADE_RUNG, rate(name, candidate), choices, tuple(kept.items())))
    return variants


def _covers_enough(configuration: dict) -> bool:
    """The patch covers at least ``MINIMUM_PATCH_COVERAGE`` of the median image (what the trade compares)."""
    median = configuration.get("median_shape")
    if median is None:
        return True
    patch = configuration["patch_size"]
    return math.prod(patch) >= MINIMUM_PATCH_COVERAGE * math.prod(median[-len(patch):])


def _grid_choice(spacing: Sequence[float], factor: float, kept: dict[int, float],
                 class_names: dict[int, str]) -> tuple[str, ...]:
    """The grid in words, and per class that loses detail on it (below ``RESOLUTION_DICE_FLOOR``), how much."""
    lost = [f"{class_names.get(value, f'class {value}')} keeps Dice {dice:.3f} of its labels on it"
            for value, dice in kept.items() if dice < RESOLUTION_DICE_FLOOR]
    grid = f"spacing {_mm(spacing)} ({factor:g}x the median)" if factor != 1.0 else f"spacing {_mm(spacing)}"
    return (grid, *(f"detail lost: {text}" for text in lost))


def choose_variant(variants: Sequence[Variant], seconds: float) -> Variant:
    """The first variant that gets ``TARGET_ITERATIONS`` steps in ``seconds``, else the cheapest.

    Once the network is narrowed, a smaller batch costs about as much per sample as the larger one, so the choice is
    only between larger batches and more steps: a narrowed variant short of ``SPLIT_FOLD_ITERATIONS`` steps gives
    way to the first smaller batch that reaches them, else to the smallest batch, the most steps (measured: at equal
    time batch 2 beat batch 3 on both Hippocampus folds; docs/training.md, "Recipe for short schedules").
    """
    faithful = [variant for variant in variants if variant.rung < TRADE_RUNG]
    for index, variant in enumerate(faithful):
        steps = variant.iterations(seconds)
        if steps >= TARGET_ITERATIONS:
            if variant.rung < NARROW_RUNG or steps >= SPLIT_FOLD_ITERATIONS:
                return variant
            smaller = faithful[index + 1:]  # the same narrowed network at smaller batches, largest first
            longer = (later for later in smaller if later.iterations(seconds) >= SPLIT_FOLD_ITERATIONS)
            return next(longer, smaller[-1] if smaller else variant)
    if len(faithful) < len(variants):  # resolution against steps: the highest expected Dice (``expected_accuracy``)
        seeing = [variant for variant in variants if _covers_enough(variant.configuration)]  # the model sees no context
        return max(seeing or variants, key=lambda variant: variant.expected_dice(seconds))
    return min(variants, key=lambda variant: variant.seconds_per_iteration)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which configurations train on which folds, with the variant each gets and why."""

    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    seconds_per_fold: float
    chosen: dict[str, Variant]
    reasons: tuple[str, ...]


def choose_layout(ladders: dict[str, list[Variant]], budget: ComputeBudget, primary: str) -> Layout:
    """Every configuration on as many folds as keep each at full quality; else the least degraded one alone.

    The only code that decides configurations, folds and variants (see the module docstring); what the user named
    in ``budget`` is kept.
    """
    named = [name for name in ladders if name in (budget.configurations or ())]
    names = named or list(ladders)  # a named stage without a ladder (a cascade, a typo) is priced as the others
    trained = len(budget.configurations) if named else len(names)
    # A named cascade trains on out-of-fold segmentations of every fold of its previous stage: all folds, always.
    every_fold = budget.folds_named or any(name in CASCADE_CONFIGURATIONS for name in named)
    counts = [len(budget.folds)] if every_fold else list(range(len(budget.folds), 0, -1))
    for folds in counts:
        seconds = budget.training_seconds / (trained * folds)
        chosen = {name: choose_variant(ladders[name], seconds) for name in names}
        if _full_quality(chosen.values(), seconds):
            why = f"every configuration trains its plan for {TARGET_ITERATIONS}+ steps on {folds} fold(s)"
            return Layout(tuple(names), budget.folds[:folds], seconds, chosen, (why,))
    if named:
        return _named_layout(ladders, budget, names, trained, counts[-1])
    alone = {name: choose_variant(ladders[name], budget.training_seconds) for name in names}
    best = min(names, key=lambda name: _preference(alone[name], budget.training_seconds, name != primary))
    for folds in counts:  # more folds only while they cost the model nothing
        seconds = budget.training_seconds / folds
        variant = choose_variant(ladders[best], seconds)
        if variant == alone[best] and variant.iterations(seconds) >= min(SPLIT_FOLD_ITERATIONS,
                                                                          alone[best].iterations(budget.training_seconds)):
            break
    reasons = [f"the budget cannot train every configuration on every fold as planned; training {best} alone "
               f"(the configuration it degrades least) on {folds} fold(s)"]
    if _degradation(variant, seconds)[0]:
        reasons.append(f"even the cheapest {best} variant gets fewer than {TARGET_ITERATIONS} steps; a larger "
                       "--time-budget buys a better model")
    return Layout((best,), budget.folds[:folds], seconds, {best: variant}, tuple(reasons))


def _named_layout(ladders: dict[str, list[Variant]], budget: ComputeBudget, names: list[str], trained: int,
                  folds: int) -> Layout:
    """The configurations the user named (``trained`` of them, ``names`` with a ladder), all of them, on ``folds``
    folds, each with the variant it can afford."""
    seconds = budget.training_seconds / (trained * folds)
    chosen = {name: choose_variant(ladders[name], seconds) for name in names}
    reasons = [f"training the named configuration(s) {', '.join(names)} on {folds} fold(s), although the budget "
               f"cannot train every one of them as planned for {TARGET_ITERATIONS} steps"]
    return Layout(tuple(names), budget.folds[:folds], seconds, chosen, tuple(reasons))


def layout_kept_plans(plans: Plans, configurations: Sequence[str], budget: ComputeBudget) -> ComputePlan:
    """The layout of plans kept from an earlier run (not refitted to this budget): ``choose_layout`` over
    ``configurations``, each kept configuration a ladder of one rung. A cascade stage is laid out only when named."""
    named = budget.configurations or ()
    kept = {name: plans.configuration(name).to_json() for name in configurations
            if name not in CASCADE_CONFIGURATIONS or name in named}
    ladders = {name: [Variant(configuration, 0, budget.seconds_per_iteration(name, configuration), ("the kept plan",))]
               for name, configuration in kept.items()}
    primary = "3d_fullres" if "3d_fullres" in ladders else next(iter(ladders))
    return compute_plan(choose_layout(ladders, budget, primary), budget, {})


def compute_plan(layout: Layout, budget: ComputeBudget, per_class: PerClassDice) -> ComputePlan:
    """The record of the decision: the budget, the layout and, per configuration, the reasoning (and, for a variant
    of the trade rung, the Dice it is expected to reach)."""
    resolution_dice = worst_class(per_class)
    return ComputePlan(
        device=budget.device,
        budget_seconds=budget.budget_seconds,
        training_seconds=round(budget.training_seconds, 1),
        target_iterations=TARGET_ITERATIONS,
        label_dice_at_coarser_spacing={f"{factor:g}": round(dice, 4) for factor, dice in resolution_dice.items()},
        configurations=layout.configurations,
        folds=layout.folds,
        seconds_per_fold=round(layout.seconds_per_fold, 1),
        reasons=layout.reasons,
        per_configuration={name: _cost(variant, layout.seconds_per_fold) for name, variant in layout.chosen.items()},
    )


def _cost(variant: Variant, seconds_per_fold: float) -> ConfigurationCost:
    """What ``seconds_per_fold`` buys ``variant``: steps, expected Dice (trade rung only) and the recipe for them."""
    iterations = variant.iterations(seconds_per_fold)
    recipe, recipe_reasons = short_schedule_recipe(iterations)
    return ConfigurationCost(
        expected_seconds_per_iteration=round(variant.seconds_per_iteration, 4),
        expected_iterations=iterations,
        rung=variant.rung,
        choices=variant.choices,
        expected_dice=round(variant.expected_dice(seconds_per_fold), 3) if variant.rung >= TRADE_RUNG else None,
        recipe=recipe,
        recipe_reasons=recipe_reasons,
    )


def _degradation(variant: Variant, seconds: float) -> tuple[bool, int]:
    """Missing the target steps is worse than any rung: a model far from converged loses more than a cheaper one."""
    return variant.iterations(seconds) < TARGET_ITERATIONS, variant.rung


def _preference(variant: Variant, seconds: float, secondary: bool) -> tuple[bool, bool, bool, int]:
    """Sort key of a configuration's fit when only one configuration trains (see the module docstring)."""
    misses_target, rung = _degradation(variant, seconds)
    return misses_target, rung >= NARROW_RUNG, secondary, rung


def _full_quality(variants, seconds: float) -> bool:
    return all(_degradation(variant, seconds) <= (False, FULL_QUALITY_RUNG) for variant in variants)


def _capped(configuration: dict, budget: ComputeBudget) -> dict:
    """The configuration with the batch the training loop will really use on the budget's device."""
    batch = device_batch_size(configuration["batch_size"], configuration["patch_size"], device=budget.device,
                              max_voxels=budget.max_voxels_per_step)
    return {**configuration, "batch_size": batch}


def _smaller_batches(batch: int) -> list[int]:
    smaller = []
    while batch > MINIMUM_BATCH_SIZE:
        batch = max(MINIMUM_BATCH_SIZE, batch // 2)
        smaller.append(batch)
    return smaller


def _narrow(configuration: dict) -> dict:
    network = configuration["network"]
    features = features_per_stage(len(network["features_per_stage"]), dimension=configuration["dimension"],
                                  base_features=NARROW_BASE_FEATURES)
    return {**configuration, "network": {**network, "features_per_stage": features}}


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{value:.3g}" for value in spacing) + " mm"
