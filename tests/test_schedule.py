"""How `autoseg run` spends a total time budget: what it trains, for how long, and what it says about it."""

from __future__ import annotations

import pytest
from model_helpers import tiny_configuration

from autoseg.pipeline import run as pipeline_run
from autoseg.pipeline.machine_benchmark import tiles_per_case
from autoseg.pipeline.run import RunClock, RunOptions, schedule_stage
from autoseg.pipeline.schedule import (
    AFTER_TRAINING_FIXED_SECONDS,
    AFTER_TRAINING_SHARE,
    DEFAULT_CPU_BUDGET_SECONDS,
    MINIMUM_USEFUL_ITERATIONS,
    after_training_reserve,
    describe_duration,
    full_schedule_seconds,
    plan_run_schedule,
)
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Plans

TINY_3D = tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16))
TINY_2D = tiny_configuration(dimension=2, spacing=(1.0, 1.0, 1.0), patch_size=(32, 32))
PLANS = Plans.from_json({"configurations": {"2d": TINY_2D, "3d_fullres": TINY_3D}})
ALL_FOLDS = (0, 1, 2, 3, 4)
RATES = {"2d": 0.5, "3d_fullres": 2.0}  # seconds per training step


def schedule(budget: float | None, *, configurations=("2d", "3d_fullres"), folds=ALL_FOLDS, named=(False, False),
             rates=RATES):
    return plan_run_schedule(
        PLANS, configurations, folds, budget_seconds=budget, elapsed_seconds=0.0,
        seconds_per_iteration=rates.get, configurations_named=named[0], folds_named=named[1],
    )


def test_a_budget_that_pays_for_everything_splits_it_evenly_after_the_share_kept_for_selection():
    budget = 10 * MINIMUM_USEFUL_ITERATIONS * 2.0 * 10 / (1 - AFTER_TRAINING_SHARE)  # 10 folds at >= the minimum
    chosen = schedule(budget)
    assert chosen.configurations == ("2d", "3d_fullres") and chosen.folds == ALL_FOLDS and not chosen.reasons
    assert chosen.seconds_per_fold == pytest.approx(budget * (1 - AFTER_TRAINING_SHARE) / 10)


def test_a_tight_budget_keeps_the_primary_configuration_then_fewer_folds_and_says_why():
    # One hour on a slow CPU: 2 s per 3D step buys 1584 steps per fold for 10 folds' worth of nothing useful.
    chosen = schedule(3600)
    assert chosen.configurations == ("3d_fullres",)
    assert len(chosen.folds) == 3  # 3168 s of training / 3 folds / 2 s = 528 steps each, >= the minimum
    assert chosen.seconds_per_fold / RATES["3d_fullres"] >= MINIMUM_USEFUL_ITERATIONS
    assert any("only 3d_fullres" in reason for reason in chosen.reasons)
    assert any("3 of 5 folds" in reason for reason in chosen.reasons)
    starved = schedule(600)
    assert starved.folds == (0,) and starved.configurations == ("3d_fullres",)  # never fewer than one fold
    assert any("even one fold gets fewer than" in reason for reason in starved.reasons)


def test_what_the_user_named_is_never_dropped():
    chosen = schedule(600, named=(True, True))
    assert chosen.configurations == ("2d", "3d_fullres") and chosen.folds == ALL_FOLDS
    assert chosen.seconds_per_fold == pytest.approx(600 * (1 - AFTER_TRAINING_SHARE) / 10)


def test_without_a_budget_or_a_known_rate_nothing_is_dropped():
    assert schedule(None).seconds_per_fold is None and schedule(None).pairs == 10
    unknown = schedule(600, rates={})
    assert unknown.pairs == 10 and unknown.seconds_per_fold == pytest.approx(600 * (1 - AFTER_TRAINING_SHARE) / 10)


def test_the_full_schedule_estimate_and_its_wording():
    seconds = full_schedule_seconds(["2d", "3d_fullres"], 5, RATES.get)
    assert seconds == pytest.approx((0.5 + 2.0) * 5 * 250_000)
    assert describe_duration(seconds) == "36 days"
    assert describe_duration(45) == "45 s" and describe_duration(1200) == "20 min"
    assert describe_duration(9000) == "2.5 h"
    assert full_schedule_seconds(["2d"], 5, {}.get) is None


DATASET = RawDataset(root="/data/Tiny", name="Tiny", channel_names=("MRI",), labels={"background": 0, "a": 1},
                     file_ending=".nii.gz", num_training=10, training_cases=())


def test_run_on_a_cpu_without_limits_prints_the_full_estimate_and_applies_the_default_budget(monkeypatch, capsys):
    monkeypatch.setattr(pipeline_run, "seconds_per_iteration_estimator", lambda *args, **kwargs: RATES.get)
    clock = RunClock(started=pipeline_run.time.monotonic(), budget_seconds=None)
    chosen = schedule_stage(PLANS, DATASET, ["2d", "3d_fullres"], RunOptions(device="cpu"), clock)
    out = capsys.readouterr().out
    assert "would train for about 36 days on cpu" in out
    assert "default budget of 60 min" in out and "--time-budget" in out
    assert clock.budget_seconds == DEFAULT_CPU_BUDGET_SECONDS
    assert chosen.configurations == ("3d_fullres",) and "steps per fold" in out and "expected to end by" in out
    assert clock.final_line().startswith("finished in") and "of the 60 min budget" in clock.final_line()


def test_run_with_epochs_or_a_per_fold_time_keeps_every_fold_and_no_budget(monkeypatch, capsys):
    def must_not_measure(*args, **kwargs):
        raise AssertionError("fixed epochs or a time per fold need no throughput measurement")

    monkeypatch.setattr(pipeline_run, "seconds_per_iteration_estimator", must_not_measure)
    for options in (RunOptions(device="cpu", epochs=3), RunOptions(device="cpu", time_per_fold="1m")):
        clock = RunClock(started=pipeline_run.time.monotonic(), budget_seconds=None)
        chosen = schedule_stage(PLANS, DATASET, ["2d", "3d_fullres"], options, clock)
        assert clock.budget_seconds is None and chosen.pairs == 10 and chosen.seconds_per_fold is None
    assert "default budget" not in capsys.readouterr().out


def test_plans_fitted_to_the_budget_decide_what_the_run_trains_unless_the_user_named_it(monkeypatch, capsys):
    monkeypatch.setattr(pipeline_run, "seconds_per_iteration_estimator", lambda *args, **kwargs: RATES.get)
    compute = {"configurations": ["2d"], "folds": [0], "reasons": ["training 2d alone: it degrades least"]}
    fitted = Plans.from_json({"compute": compute, "configurations": {"2d": TINY_2D, "3d_fullres": TINY_3D}})
    clock = RunClock(started=pipeline_run.time.monotonic(), budget_seconds=3600.0)
    chosen = schedule_stage(fitted, DATASET, ["2d", "3d_fullres"], RunOptions(device="cpu", time_budget="1h"), clock)
    assert chosen.configurations == ("2d",) and chosen.folds == (0,)
    assert 0.8 * 3600 < chosen.seconds_per_fold < 3600  # what is left after preprocessing and the final share
    assert "it degrades least" in capsys.readouterr().out
    named = RunOptions(device="cpu", time_budget="1h", folds=(0, 1), folds_named=True)
    chosen = schedule_stage(fitted, DATASET, ["2d", "3d_fullres"], named, clock)
    assert chosen.folds == (0, 1) and chosen.configurations == ("2d",)  # the user's folds, the plan's configuration
    named = RunOptions(device="cpu", time_budget="1h", configurations=("3d_fullres",))
    chosen = schedule_stage(fitted, DATASET, ["3d_fullres"], named, clock)
    assert chosen.configurations == ("3d_fullres",) and chosen.folds == (0,)


def test_training_leaves_what_validation_is_predicted_to_need_not_a_fixed_share():
    # 40 validation cases at 2 s each: 1.5 x 80 s + 60 s, far below 12 % of an hour.
    assert after_training_reserve(3600.0, [(40, 2.0)]) == pytest.approx(AFTER_TRAINING_FIXED_SECONDS + 1.5 * 80.0)
    # Large cases (many configurations and folds) are capped at the share; an unknown rate falls back to it.
    assert after_training_reserve(3600.0, [(40, 60.0)] * 10) == pytest.approx(AFTER_TRAINING_SHARE * 3600.0)
    assert after_training_reserve(3600.0, [(40, 2.0), (40, None)]) == pytest.approx(AFTER_TRAINING_SHARE * 3600.0)


def test_tiles_per_case_counts_half_overlapping_windows_and_slices():
    assert tiles_per_case((35.5, 51.0, 35.0), (40, 56, 40)) == 1  # a case smaller than the patch: one padded tile
    assert tiles_per_case((100.0, 100.0), (50, 50)) == 9  # starts 0, 25, 50 on each axis
    assert tiles_per_case((36.0, 51.0, 35.0), (56, 40)) == 36  # a 2D network predicts each of the 36 slices
