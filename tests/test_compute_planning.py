"""Compute-aware planning: what a time budget changes in the plans, and what it must never change."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.fingerprint.resolution import round_trip_dice
from autoseg.fingerprint.synthetic import synthetic_fingerprint
from autoseg.planning import plan_experiment
from autoseg.planning.expected_accuracy import learned_share
from autoseg.planning.layout import (
    RESOLUTION_DICE_FLOOR,
    SPLIT_FOLD_ITERATIONS,
    TARGET_ITERATIONS,
    TRADE_RUNG,
    ComputeBudget,
    Variant,
    choose_layout,
    choose_variant,
    ladder,
)
from autoseg.planning.short_schedule import SHORT_SCHEDULE_RECIPE, SHORT_SCHEDULE_STEPS
from autoseg.records.compute_plan import ComputePlan
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.plans import load_plans
from autoseg.records.work_folder import WorkFolder

SECONDS_PER_GIGAVOXEL_FEATURE = 2e-3  # a made-up machine: cost grows with batch, voxels and first-stage width


def rate(_name: str, configuration: dict) -> float:
    voxels = configuration["batch_size"] * math.prod(configuration["patch_size"])
    width = configuration["network"]["features_per_stage"][0] / 32
    return 0.05 + SECONDS_PER_GIGAVOXEL_FEATURE * voxels / 1e3 * width**2


def survives_up_to(largest: float):
    """A label round trip that keeps Dice 0.999 up to ``largest`` x coarser and collapses beyond."""
    return lambda _spacing, factors: {factor: {1: 0.999 if factor <= largest else 0.9} for factor in factors}


def compute(seconds: float, *, survives: float = 1.0, device: str = "cpu", cap: int | None = None) -> ComputeBudget:
    return ComputeBudget(training_seconds=seconds, seconds_per_iteration=rate, device=device,
                         label_round_trip=survives_up_to(survives), max_voxels_per_step=cap, budget_seconds=seconds)


def plan(compute_budget: ComputeBudget | None, *, spacing=(1.0, 0.13, 0.13), shape=(1, 540, 800), **options):
    fingerprint, dataset = synthetic_fingerprint(name="synthetic", spacing=spacing, shape=shape, **options)
    return plan_experiment(fingerprint, dataset, compute=compute_budget)


def test_a_budget_that_pays_for_every_fold_keeps_the_memory_fitted_plans_unchanged() -> None:
    spacing, shape = (1.0, 1.0, 1.0), (300, 300, 300)  # large enough for a cascade
    reference = plan(None, spacing=spacing, shape=shape)
    generous = plan(compute(1e9, device="cuda"), spacing=spacing, shape=shape)
    assert "3d_cascade_fullres" in reference.names
    assert generous.to_json()["configurations"] == reference.to_json()["configurations"]
    record = generous.get("compute")
    assert record["folds"] == [0, 1, 2, 3, 4] and set(record["configurations"]) == {"2d", "3d_fullres"}
    assert all(entry["rung"] == 0 and entry["expected_iterations"] >= TARGET_ITERATIONS
               for entry in record["per_configuration"].values())
    # Hundreds of thousands of steps: the reference's recipe, which is proven there.
    assert all("recipe" not in entry for entry in record["per_configuration"].values())


def test_a_budget_that_buys_a_short_schedule_records_the_recipe_for_it_with_its_reasons() -> None:
    record = plan(compute(1800.0)).compute
    assert record is not None and record.per_configuration
    for name, cost in record.per_configuration.items():
        assert cost.expected_iterations < SHORT_SCHEDULE_STEPS
        assert record.recipe_for(name) == {field: value for field, (value, _) in SHORT_SCHEDULE_RECIPE.items()}
        assert len(cost.recipe_reasons) == len(SHORT_SCHEDULE_RECIPE)
        assert all(f"{cost.expected_iterations} steps is a short schedule" in reason for reason in cost.recipe_reasons)
    assert ComputePlan.from_json(record.to_json()) == record


def test_a_budget_that_refits_3d_fullres_drops_the_cascade_and_with_it_batch_dice() -> None:
    spacing, shape = (1.0, 0.8, 0.8), (300, 512, 512)  # the fullres patch covers < 25 %: a cascade is planned
    assert plan(None, spacing=spacing, shape=shape).configuration("3d_fullres").batch_dice  # cascade: batch Dice
    tight = plan(compute(600, survives=2.0), spacing=spacing, shape=shape)
    assert "3d_cascade_fullres" not in tight.to_json()["configurations"]
    assert tight.configuration("3d_fullres").batch_dice is False  # no cascade: per-sample Dice, as the reference


def test_a_budget_that_names_the_cascade_fits_both_stages_and_trains_them_on_every_fold() -> None:
    spacing, shape = (1.0, 0.8, 0.8), (300, 512, 512)  # a cascade is planned, and 600 s cannot pay for it as planned
    asked = []

    def round_trip(grid, factors):  # the labels' loss is measured from each stage's own grid
        asked.append([round(value, 4) for value in grid])
        return survives_up_to(2.0)(grid, factors)

    named = dataclasses.replace(compute(600), label_round_trip=round_trip,
                                configurations=("3d_lowres", "3d_cascade_fullres"))
    plans = plan(named, spacing=spacing, shape=shape)
    reference = plan(None, spacing=spacing, shape=shape)
    assert asked == [[round(value, 4) for value in reference.configuration(name).spacing]
                     for name in ("3d_fullres", "3d_lowres")]
    lowres, cascade = plans.configuration("3d_lowres"), plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and lowres.previous_stage is None
    fullres = plans.configuration("3d_fullres")  # the cascade is 3d_fullres's fit, reading the lowres segmentation
    assert (cascade.spacing, cascade.patch_size, cascade.network) == (fullres.spacing, fullres.patch_size,
                                                                      fullres.network)
    assert math.prod(cascade.patch_size) < math.prod(reference.configuration("3d_cascade_fullres").patch_size)
    assert all(low >= full * 0.999 for low, full in zip(lowres.spacing, cascade.spacing, strict=True))
    record = plans.get("compute")
    assert record["folds"] == [0, 1, 2, 3, 4]  # the cascade learns from out-of-fold maps of every lowres fold
    assert record["configurations"] == ["3d_lowres", "3d_cascade_fullres"]
    assert record["seconds_per_fold"] == pytest.approx(600 / 10, rel=1e-3)


def test_a_budget_no_faithful_grid_can_train_trades_resolution_for_steps_and_says_what_is_lost() -> None:
    reference = plan(None).configuration("2d")
    for survives in (2.0, 4.0):
        plans = plan(compute(30.0, survives=survives))  # no grid that keeps every class reaches the target steps
        fitted, entry = plans.configuration("2d"), plans.get("compute")["per_configuration"]["2d"]
        assert entry["rung"] == TRADE_RUNG and 0.0 < entry["expected_dice"] < 1.0
        assert fitted.spacing[0] == reference.spacing[0]  # the slice axis is never resampled
        factor = fitted.spacing[1] / reference.spacing[1]
        lost = any("detail lost: class 1 keeps Dice 0.900" in choice for choice in entry["choices"])
        assert lost == (factor > survives * 1.001)  # a grid that smears the class says so
        assert math.prod(fitted.patch_size) < math.prod(reference.patch_size)


def test_a_moderate_budget_coarsens_only_as_much_as_the_target_steps_need() -> None:
    reference = plan(None).configuration("2d")
    moderate = plan(compute(2000, survives=8.0))
    fitted = moderate.configuration("2d")
    entry = moderate.get("compute")["per_configuration"]["2d"]
    factor = fitted.spacing[1] / reference.spacing[1]
    assert 1.0 < factor < 8.0 and entry["rung"] == 1 and entry["expected_iterations"] >= TARGET_ITERATIONS
    assert f"{factor:.3g}x the median" in " ".join(entry["choices"])
    assert entry["expected_seconds_per_iteration"] == pytest.approx(rate("2d", fitted.to_json()), rel=1e-3)


def test_labels_that_do_not_survive_a_coarser_grid_keep_the_full_resolution() -> None:
    fitted = plan(compute(600, survives=1.0)).configuration("2d")
    assert fitted.spacing == plan(None).configuration("2d").spacing
    assert fitted.network.features_per_stage[0] == 16  # the budget is met by a narrower network instead


def test_a_narrower_network_comes_before_a_smaller_batch_and_the_batch_is_what_the_cpu_runs() -> None:
    spacing, shape = (1.0, 1.0, 1.0), (36, 50, 35)
    reference = plan(None, spacing=spacing, shape=shape, num_cases=260).configuration("3d_fullres").to_json()
    assert reference["batch_size"] > 4
    cap = 4 * math.prod(reference["patch_size"])
    variants = ladder("3d_fullres", reference, refit=None, budget=compute(1e6, cap=cap), per_class={})
    assert [variant.rung for variant in variants] == [0, 2, 3]  # no coarser spacing allowed: plan, narrow, batch 2
    assert variants[0].configuration["batch_size"] == 4  # never more than the CPU loop would really run
    assert variants[1].configuration["network"]["features_per_stage"][0] == 16
    assert variants[1].configuration["batch_size"] == 4 and variants[2].configuration["batch_size"] == 2
    costs = [variant.seconds_per_iteration for variant in variants]
    assert costs == sorted(costs, reverse=True)
    assert choose_variant(variants, SPLIT_FOLD_ITERATIONS * costs[1] * 1.01) == variants[1]  # ample: batch stays
    assert choose_variant(variants, TARGET_ITERATIONS * costs[1] * 1.01) == variants[2]  # short of it: most steps


def test_a_budget_too_small_for_anything_takes_the_best_expected_variant_and_says_so() -> None:
    record = plan(compute(5.0, survives=4.0)).get("compute")
    assert record["folds"] == [0] and record["configurations"] == ["2d"]
    assert any("fewer than" in reason and "--time-budget" in reason for reason in record["reasons"])
    entry = record["per_configuration"]["2d"]
    assert entry["rung"] == TRADE_RUNG and entry["expected_iterations"] < TARGET_ITERATIONS


def test_resolution_is_traded_for_steps_only_while_the_steps_are_worth_more_than_the_labels_lost() -> None:
    assert learned_share(300) == pytest.approx(0.767, abs=0.001) and learned_share(5300) > 0.98  # the calibration
    assert learned_share(88) < 0.2 < learned_share(1500)  # a handful of steps learns nothing usable
    fine = Variant({"name": "full grid"}, 3, 10.0, ("batch 2",))
    coarse = Variant({"name": "3x"}, TRADE_RUNG, 0.5, ("3x",), label_dice=((1, 0.99), (2, 0.99), (3, 0.96)))
    assert choose_variant([fine, coarse], 900.0) == coarse  # 90 steps against 1800 of a grid keeping 0.98 on average
    tiny_loss = Variant({"name": "2x"}, TRADE_RUNG, 5.0, ("2x",), label_dice=((1, 0.999), (2, 0.5)))
    assert choose_variant([fine, tiny_loss], 40000.0) == fine  # with steps enough, the full grid keeps its class


def _label_case(folder, identifier: str, label: np.ndarray, spacing) -> Case:
    path = folder / f"{identifier}.nii.gz"
    image = sitk.GetImageFromArray(label.astype(np.uint8))
    image.SetSpacing(tuple(float(value) for value in reversed(spacing)))
    sitk.WriteImage(image, str(path))
    return Case(identifier, (str(path),), str(path))


def test_a_large_structure_survives_a_coarser_grid_and_a_small_one_does_not(tmp_path) -> None:
    _, y, x = np.mgrid[:1, :300, :300]
    disc = ((y - 150) ** 2 + (x - 150) ** 2 < 140**2).astype(np.uint8)
    disc[0, 2:5, 2:5] = 2  # a second class of 3 x 3 pixels
    case = _label_case(tmp_path, "case_000", disc, (1.0, 0.2, 0.2))
    dataset = RawDataset(root=str(tmp_path), name="Discs", channel_names=("US",),
                         labels={"background": 0, "head": 1, "dot": 2}, file_ending=".nii.gz", num_training=1,
                         training_cases=(case,))
    dice = round_trip_dice(dataset, [1.0, 0.2, 0.2], [2.0, 4.0], is_2d=True)
    assert dice[2.0] < RESOLUTION_DICE_FLOOR  # the worst class decides: the dot is smeared at 0.4 mm
    disc[disc == 2] = 0
    _label_case(tmp_path, "case_000", disc, (1.0, 0.2, 0.2))
    dice = round_trip_dice(dataset, [1.0, 0.2, 0.2], [2.0, 4.0], is_2d=True)
    assert dice[2.0] >= RESOLUTION_DICE_FLOOR and dice[4.0] < dice[2.0]


class MadeUpMachine:
    """The made-up step cost of ``rate`` instead of measuring this machine."""

    device = torch.device("cpu")

    def step_seconds(self, configuration):
        return rate(configuration.name, configuration.to_json())


@pytest.fixture
def made_up_machine(monkeypatch) -> None:
    monkeypatch.setattr("autoseg.pipeline.budget.machine_costs", lambda *args, **kwargs: MadeUpMachine())


def test_plan_with_a_time_budget_writes_and_shows_its_reasoning(made_up_machine, tmp_path, copy_cases, hc18_root,
                                                                capsys) -> None:
    root = copy_cases(hc18_root, 6)
    work = tmp_path / "work"
    assert main(["plan", str(root), "--work-dir", str(work), "--time-budget", "10m", "--workers", "1"]) == 0
    plans = load_plans(WorkFolder.for_dataset(str(work), root).plans)
    record = plans.get("compute")
    assert record["budget_seconds"] == 600 and record["configurations"] == ["2d"]
    assert float(record["label_dice_at_coarser_spacing"]["2"]) > 0.99  # real fetal-head outlines
    assert plans.configuration("2d").spacing[1] > 0.2  # coarser than HC18's ~0.13 mm
    capsys.readouterr()
    assert main(["plan", str(root), "--work-dir", str(work), "--show"]) == 0
    shown = capsys.readouterr().out
    assert "fitted to a time budget of 10 min on cpu" in shown and "steps" in shown and "spacing" in shown
    assert "recipe: " in shown and "short schedule" in shown


def test_plan_with_a_time_budget_plans_for_the_configurations_and_folds_a_run_is_told_to_train(
        made_up_machine, tmp_path, copy_cases, hc18_root, capsys) -> None:
    root = copy_cases(hc18_root, 6)
    work = tmp_path / "work"
    arguments = ["plan", str(root), "--work-dir", str(work), "--workers", "1"]
    assert main([*arguments, "--time-budget", "10m", "--configs", "2d", "--folds", "0", "1"]) == 0
    record = load_plans(WorkFolder.for_dataset(str(work), root).plans).get("compute")
    assert record["configurations"] == ["2d"] and record["folds"] == [0, 1]  # named folds are the folds
    capsys.readouterr()
    assert main([*arguments, "--folds", "0"]) == 2  # without a budget there is nothing to fit them to
    assert "--time-budget" in capsys.readouterr().err
    assert main([*arguments, "--time-budget", "10m", "--configs", "3d_fullres"]) == 2  # 2D images: no 3D plan
    assert "'3d_fullres' is not in the plan" in capsys.readouterr().err


def test_a_configuration_that_reaches_the_target_steps_wins_over_one_that_keeps_its_plan_but_cannot() -> None:
    slow = [Variant({"name": "3d"}, 0, 3.0, ("plan",)), Variant({"name": "3d narrow"}, 2, 1.0, ("narrow",))]
    fast = [Variant({"name": "2d"}, 0, 1.0, ("plan",)), Variant({"name": "2d small"}, 3, 0.1, ("batch 2",))]
    seconds = 300.0  # 2d at batch 2 gets 3000 steps; 3d gets at most 300
    layout = choose_layout({"2d": fast, "3d_fullres": slow}, compute(seconds), primary="3d_fullres")
    assert layout.configurations == ("2d",) and layout.chosen["2d"] == fast[1]
    assert not any("fewer than" in reason for reason in layout.reasons)
    tie = choose_layout({"2d": slow, "3d_fullres": slow}, compute(seconds), primary="3d_fullres")
    assert tie.configurations == ("3d_fullres",)  # equally degraded: the primary configuration


def test_a_narrowed_3d_fullres_fit_wins_over_a_narrowed_2d_fit_on_a_lower_rung() -> None:
    narrow_3d = [Variant({"name": "3d"}, 0, 3.0, ("plan",)), Variant({"name": "3d narrow"}, 2, 1.0, ("narrow",)),
                 Variant({"name": "3d narrow batch 3"}, 3, 0.5, ("narrow", "batch 3"))]
    narrow_2d = [Variant({"name": "2d"}, 0, 3.0, ("plan",)), Variant({"name": "2d narrow"}, 2, 0.5, ("narrow",))]
    seconds = 1500.0  # both narrowed fits get 3000 steps; 2d keeps its batch, 3d_fullres halves it
    layout = choose_layout({"2d": narrow_2d, "3d_fullres": narrow_3d}, compute(seconds), primary="3d_fullres")
    assert layout.configurations == ("3d_fullres",) and layout.chosen["3d_fullres"] == narrow_3d[2]
    coarse_2d = [Variant({"name": "2d"}, 0, 3.0, ("plan",)), Variant({"name": "2d coarse"}, 1, 0.5, ("coarse",))]
    layout = choose_layout({"2d": coarse_2d, "3d_fullres": narrow_3d}, compute(seconds), primary="3d_fullres")
    assert layout.configurations == ("2d",)  # a fit that keeps its network still wins over a narrowed one


def test_a_narrowed_network_short_of_ample_steps_gives_way_to_a_smaller_batch_that_reaches_them() -> None:
    plan_variant = Variant({"name": "plan"}, 0, 3.0, ("plan",))
    narrow = Variant({"name": "narrow, batch 7"}, 2, 1.0, ("narrow",))
    smaller = Variant({"name": "narrow, batch 3"}, 3, 0.45, ("narrow", "batch 3"))
    smallest = Variant({"name": "narrow, batch 2"}, 3, 0.3, ("narrow", "batch 2"))
    variants = [plan_variant, narrow, smaller, smallest]
    seconds = 3000.0  # narrow: 3000 steps, batch 3: 6666, batch 2: 10000
    assert TARGET_ITERATIONS <= narrow.iterations(seconds) < SPLIT_FOLD_ITERATIONS
    assert choose_variant(variants, seconds) == smaller  # the first smaller batch with ample steps, not the smallest
    assert choose_variant(variants, 4500.0) == narrow  # 4500 steps at batch 7 are ample: the batch stays
    # Batch 3 reaches the target, and no smaller batch reaches ample steps (batch 3: 2444, batch 2: 3666): the most
    # steps win, as batch 2 beat batch 3 given the same time on both Hippocampus folds.
    assert smaller.iterations(1100.0) < smallest.iterations(1100.0) < SPLIT_FOLD_ITERATIONS
    assert choose_variant(variants, 1100.0) == smallest
    assert choose_variant(variants, 6000.0) == plan_variant  # the network as planned, 3000 steps: no trade


def test_what_the_user_named_is_what_the_layout_fits() -> None:
    slow = [Variant({"name": "3d"}, 0, 3.0, ("plan",)), Variant({"name": "3d narrow"}, 2, 1.0, ("narrow",))]
    fast = [Variant({"name": "2d"}, 0, 1.0, ("plan",)), Variant({"name": "2d small"}, 3, 0.1, ("batch 2",))]
    ladders = {"2d": fast, "3d_fullres": slow}
    folds = dataclasses.replace(compute(3000.0), folds=(1, 3), folds_named=True)
    layout = choose_layout(ladders, folds, primary="3d_fullres")
    assert layout.folds == (1, 3) and layout.seconds_per_fold == 1500.0  # the variant is fitted to two folds
    named = dataclasses.replace(compute(300.0), configurations=("2d", "3d_fullres"))
    layout = choose_layout(ladders, named, primary="3d_fullres")
    assert layout.configurations == ("2d", "3d_fullres") and layout.folds == (0,)  # none dropped, one fold
    assert layout.chosen["3d_fullres"] == slow[1] and any("named" in reason for reason in layout.reasons)


def test_a_named_stage_without_a_ladder_is_priced_and_never_divides_by_zero() -> None:
    fullres = [Variant({"name": "3d"}, 0, 0.1, ("plan",))]
    cascade = dataclasses.replace(compute(6000.0), configurations=("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    layout = choose_layout({"3d_fullres": fullres}, cascade, primary="3d_fullres")
    assert layout.configurations == ("3d_fullres",)
    assert layout.seconds_per_fold == pytest.approx(6000.0 / (3 * len(layout.folds)))  # three stages share it
    unknown = dataclasses.replace(compute(6000.0), configurations=("3d_lowres",))  # the run refuses the name later
    assert choose_layout({"3d_fullres": fullres}, unknown, primary="3d_fullres").configurations == ("3d_fullres",)
