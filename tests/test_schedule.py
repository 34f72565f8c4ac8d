"""How `autoseg run` spends a total time budget: what it trains, for how long, and what it says about it."""

from __future__ import annotations

import time

import pytest
import torch
from model_helpers import tiny_configuration

from autoseg.pipeline import run as pipeline_run
from autoseg.pipeline.budget import (
    AFTER_TRAINING_FIXED_SECONDS,
    AFTER_TRAINING_SHARE,
    DEFAULT_CPU_BUDGET_SECONDS,
    PREPROCESSING_SHARE,
    RunBudget,
    full_schedule_seconds,
    whole_run_seconds,
)
from autoseg.pipeline.machine_benchmark import tiles_per_case
from autoseg.pipeline.run import (
    MIRRORING_CASE_SECONDS,
    RunOptions,
    prediction_advice,
    schedule_stage,
    validation_mirroring,
)
from autoseg.planning.layout import TARGET_ITERATIONS
from autoseg.records.dataset import RawDataset
from autoseg.records.inference_recipe import InferenceRecipe, RecipeModel
from autoseg.records.plans import Configuration, Plans
from autoseg.utils.durations import describe_duration

TINY_3D = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16))
TINY_2D = tiny_configuration(dimension=2, spacing=(1.0, 1.0, 1.0), patch_size=(32, 32))
PLANS = Plans.from_json({"configurations": {"2d": TINY_2D, "3d_fullres": TINY_3D}})
ALL_FOLDS = (0, 1, 2, 3, 4)
RATES = {"2d": 0.5, "3d_fullres": 2.0}  # seconds per training step
DATASET = RawDataset(root="/data/Tiny", name="Tiny", channel_names=("MRI",), labels={"background": 0, "a": 1},
                     file_ending=".nii.gz", num_training=10, training_cases=())


class FakeCosts:
    """A machine whose step costs ``RATES`` by configuration name and whose case prediction costs 2 s."""

    device = torch.device("cpu")

    def step_seconds(self, configuration: Configuration) -> float:
        return RATES[configuration.name]

    def case_prediction_seconds(self, configuration: Configuration, *, input_voxels: float | None = None,
                                mirrored: bool = True) -> float:
        return 2.0 * (RATES[configuration.name] * 100 if mirrored else RATES[configuration.name])


@pytest.fixture
def fake_machine(monkeypatch):
    monkeypatch.setattr(pipeline_run, "machine_costs", lambda *args, **kwargs: FakeCosts())


def budget_of(seconds: float | None) -> RunBudget:
    return RunBudget(started=time.monotonic(), budget_seconds=seconds)


def schedule(seconds: float, *, plans: Plans = PLANS, kept: bool = True, **options):
    return schedule_stage(plans, DATASET, ["2d", "3d_fullres"], RunOptions(device="cpu", time_budget="1h", **options),
                          budget_of(seconds), kept=kept)


def training_share(seconds: float) -> float:
    return seconds * (1 - AFTER_TRAINING_SHARE - PREPROCESSING_SHARE)


def test_kept_plans_a_budget_pays_for_everywhere_train_every_configuration_on_every_fold(fake_machine):
    seconds = whole_run_seconds(10 * TARGET_ITERATIONS * 2.0 * 1.01)  # 10 folds at the target steps, 3D's rate
    chosen = schedule(seconds)
    assert chosen.configurations == ("2d", "3d_fullres") and chosen.folds == ALL_FOLDS
    assert chosen.compute.per_configuration["3d_fullres"].expected_iterations >= TARGET_ITERATIONS
    assert chosen.compute.per_configuration["3d_fullres"].choices == ("the kept plan",)


def test_kept_plans_under_a_tight_budget_are_laid_out_by_the_planners_rule_and_say_why(fake_machine, capsys):
    chosen = schedule(3600)  # 2988 s of training: only 2d reaches the target steps, and only on one fold
    assert chosen.configurations == ("2d",) and chosen.folds == (0,)
    out = capsys.readouterr().out
    assert "training 2d alone" in out and "fewer than" not in out
    assert "steps per fold" in out and "expected to end by" in out
    starved = schedule(600)
    assert starved.configurations == ("3d_fullres",) and starved.folds == (0,)  # both miss: the primary, one fold
    assert any(f"fewer than {TARGET_ITERATIONS} steps" in reason for reason in starved.compute.reasons)


def test_what_the_user_named_is_never_dropped(fake_machine):
    chosen = schedule(600, configurations=("2d", "3d_fullres"), folds=ALL_FOLDS, folds_named=True)
    assert chosen.configurations == ("2d", "3d_fullres") and chosen.folds == ALL_FOLDS
    assert any("named" in reason for reason in chosen.compute.reasons)


def test_plans_fitted_to_the_budget_decide_what_the_run_trains(fake_machine, capsys):
    compute = {"device": "cpu", "budget_seconds": 3600.0, "training_seconds": 2900.0, "target_iterations": 2000,
               "configurations": ["2d"], "folds": [0], "seconds_per_fold": 2900.0,
               "reasons": ["training 2d alone: it degrades least"], "per_configuration": {}}
    fitted = Plans.from_json({"compute": compute, "configurations": {"2d": TINY_2D, "3d_fullres": TINY_3D}})
    chosen = schedule(3600.0, plans=fitted, kept=False)
    assert chosen.configurations == ("2d",) and chosen.folds == (0,)
    assert "it degrades least" in capsys.readouterr().out
    named = schedule(3600.0, plans=fitted, kept=False, folds=(0, 1), folds_named=True)
    assert named.folds == (0, 1) and named.configurations == ("2d",)  # the user's folds, the plan's configuration
    resumed = schedule(3600.0, plans=fitted, kept=True)  # kept plans are laid out again for what is left
    assert resumed.configurations == ("2d",) and resumed.compute.per_configuration["2d"].choices == ("the kept plan",)


def test_run_on_a_cpu_without_limits_prints_the_full_estimate_and_applies_the_default_budget(fake_machine, capsys):
    budget = budget_of(None)
    budget.apply_cpu_default(torch.device("cpu"), limited=False)
    chosen = schedule_stage(PLANS, DATASET, ["2d", "3d_fullres"], RunOptions(device="cpu"), budget)
    out = capsys.readouterr().out
    assert "would train for about 36 days on cpu" in out
    assert "default budget of 60 min" in out and "--time-budget" in out
    assert budget.budget_seconds == DEFAULT_CPU_BUDGET_SECONDS
    assert chosen.configurations == ("2d",) and "steps per fold" in out
    assert budget.final_line().startswith("finished in") and "of the 60 min budget" in budget.final_line()


def test_run_with_epochs_or_a_per_fold_time_keeps_every_fold_and_no_budget(monkeypatch, capsys):
    def must_not_measure(*args, **kwargs):
        raise AssertionError("fixed epochs or a time per fold need no throughput measurement")

    monkeypatch.setattr(pipeline_run, "machine_costs", must_not_measure)
    for options in (RunOptions(device="cpu", epochs=3), RunOptions(device="cpu", time_per_fold="1m")):
        budget = budget_of(None)
        budget.apply_cpu_default(torch.device("cpu"), limited=True)
        chosen = schedule_stage(PLANS, DATASET, ["2d", "3d_fullres"], options, budget)
        assert budget.budget_seconds is None and chosen.pairs == 10 and chosen.compute is None
    assert "default budget" not in capsys.readouterr().out


def test_the_full_schedule_estimate_and_its_wording():
    configurations = [PLANS.configuration("2d"), PLANS.configuration("3d_fullres")]
    seconds = full_schedule_seconds(configurations, 5, FakeCosts())
    assert seconds == pytest.approx((0.5 + 2.0) * 5 * 250_000)
    assert describe_duration(seconds) == "36 days"
    assert describe_duration(45) == "45 s" and describe_duration(1200) == "20 min"
    assert describe_duration(9000) == "2.5 h"


def test_training_leaves_what_validation_is_predicted_to_need_not_a_fixed_share():
    budget = budget_of(3600.0)
    # 40 validation cases at 2 s each: 1.5 x 80 s + 60 s, far below 12 % of an hour.
    assert budget.after_training_reserve([(40, 2.0)]) == pytest.approx(AFTER_TRAINING_FIXED_SECONDS + 1.5 * 80.0,
                                                                       abs=0.1)
    # Large cases (many configurations and folds) are capped at the share; an unknown rate falls back to it.
    assert budget.after_training_reserve([(40, 60.0)] * 10) == pytest.approx(AFTER_TRAINING_SHARE * 3600.0, abs=0.1)
    assert budget.after_training_reserve([(40, 2.0), (40, None)]) == pytest.approx(AFTER_TRAINING_SHARE * 3600.0,
                                                                                  abs=0.1)


def test_each_fold_shares_what_is_left_and_optional_work_gets_at_most_half():
    budget = budget_of(1000.0)
    assert budget.fold_seconds(100.0, 3) == pytest.approx(300.0, abs=0.1)
    assert budget.training_seconds() == pytest.approx(training_share(1000.0), abs=0.1)
    budget.started -= 2000.0  # the budget is spent: nothing is left for anything
    assert budget.fold_seconds(0.0, 1) == 0.0 and budget.seconds_left == 0.0
    fresh = budget_of(1000.0)
    assert fresh.affords(400.0) and not fresh.affords(600.0) and not fresh.affords(None)
    assert budget_of(None).affords(None)  # without a budget optional work always runs


def test_tiles_per_case_counts_half_overlapping_windows_and_slices():
    assert tiles_per_case((35.5, 51.0, 35.0), (40, 56, 40)) == 1  # a case smaller than the patch: one padded tile
    assert tiles_per_case((100.0, 100.0), (50, 50)) == 9  # starts 0, 25, 50 on each axis
    assert tiles_per_case((36.0, 51.0, 35.0), (56, 40)) == 36  # a 2D network predicts each of the 36 slices


def test_the_run_recommends_mirroring_only_while_a_median_case_stays_quick(tmp_path):
    quick = prediction_advice(tmp_path, PLANS, InferenceRecipe(models=(RecipeModel("2d", (0,)),)), None)
    assert quick.endswith(str(tmp_path)) and "--no-tta" not in quick  # no budget, no costs: the default command
    slow = prediction_advice(tmp_path, PLANS, InferenceRecipe(models=(RecipeModel("3d_fullres", (0, 1)),)), FakeCosts())
    assert "--no-tta" in slow and "800 s per median-sized case" in slow and "8 s without it" in slow
    fast = prediction_advice(tmp_path, PLANS, InferenceRecipe(models=(RecipeModel("2d", (0,)),)), FakeCosts())
    assert "--no-tta" in fast  # 100 s with mirroring: over the limit as well
    assert MIRRORING_CASE_SECONDS < 100


def test_a_budgeted_run_validates_without_mirroring_where_it_recommends_predicting_without(capsys, tmp_path):
    costs = FakeCosts()  # 2d: 100 s per median case with mirroring, 1 s without; over MIRRORING_CASE_SECONDS
    assert not validation_mirroring(costs, PLANS.configuration("2d"), None)
    assert ("validation predicts 2d without test-time mirroring: about 100 s per median-sized case with it, 1 s "
            "without; its cross-validation Dice is that of predict --no-tta") in capsys.readouterr().out
    advice = prediction_advice(tmp_path, PLANS, InferenceRecipe(models=(RecipeModel("2d", (0,)),)), costs)
    assert "--no-tta" in advice  # the rule validation follows is the one prediction is advised by

    class QuickCosts(FakeCosts):
        def case_prediction_seconds(self, configuration, *, input_voxels=None, mirrored=True):
            return 10.0 if mirrored else 2.0

    assert validation_mirroring(QuickCosts(), PLANS.configuration("2d"), None)
    assert capsys.readouterr().out == ""
