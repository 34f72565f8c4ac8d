"""The training recipe's options: learning-rate schedules, the weight average, augmentation strengths, the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.transforms.spatial_transforms import MirrorTransform
from test_training import TINY_DATASET, InterruptAfterEpoch, quiet, tiny_job, tiny_settings, write_tiny_work_folder

from autoseg.cli import main as cli_main
from autoseg.errors import UserError
from autoseg.pipeline.run import RunOptions, training_settings
from autoseg.records.compute_plan import ComputePlan, ConfigurationCost
from autoseg.records.plans import load_plans
from autoseg.training.augmentation import (
    AUGMENTATION_PRESETS,
    augmentation_preset,
    build_training_transforms,
    compose,
    spatial_transform,
)
from autoseg.training.loop import train_fold
from autoseg.training.schedule import SCHEDULES, learning_rate_at


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_schedule_starts_at_the_peak_decays_monotonically_and_ends_at_zero(schedule: str) -> None:
    rates = [learning_rate_at(0.01, progress, schedule=schedule) for progress in np.linspace(0, 1, 101)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates))


def test_warm_up_climbs_linearly_to_the_peak_then_the_schedule_decays_over_the_rest() -> None:
    assert learning_rate_at(0.01, 0.0, schedule="linear", warmup_fraction=0.1) == 0.0
    assert learning_rate_at(0.01, 0.05, schedule="linear", warmup_fraction=0.1) == pytest.approx(0.005)
    assert learning_rate_at(0.01, 0.1, schedule="linear", warmup_fraction=0.1) == pytest.approx(0.01)
    assert learning_rate_at(0.01, 0.55, schedule="linear", warmup_fraction=0.1) == pytest.approx(0.005)
    with pytest.raises(UserError, match="poly"):
        learning_rate_at(0.01, 0.5, schedule="step")


def test_a_weight_average_is_saved_for_prediction_and_a_resumed_run_continues_it(tmp_path: Path) -> None:
    """The checkpoint's ``network`` (what prediction loads) is the average, not the last weights, and a resumed run
    restores the average and its count instead of restarting it from the trained weights."""
    write_tiny_work_folder(tmp_path)
    job = tiny_job(tmp_path)
    settings = tiny_settings(epochs=4, weight_averaging_decay=0.9)
    with pytest.raises(KeyboardInterrupt):
        train_fold(job, settings, epoch_end_callbacks=[InterruptAfterEpoch(2)], log_message=quiet)
    latest = torch.load(job.fold_folder / "checkpoint_latest.pt", map_location="cpu", weights_only=True)
    assert latest["averaged_updates"] == 2 * 4
    assert any(not torch.equal(latest["network"][name], latest["training_network"][name])
               for name in latest["network"])

    # Resuming with the planned epochs already reached restores everything and trains nothing.
    train_fold(job, tiny_settings(epochs=2, weight_averaging_decay=0.9, resume=True), log_message=quiet)
    restored = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    for key in ("network", "training_network"):
        assert all(torch.equal(restored[key][name], tensor) for name, tensor in latest[key].items())
    assert restored["averaged_updates"] == 2 * 4

    resumed = train_fold(job, tiny_settings(epochs=4, weight_averaging_decay=0.9, resume=True), log_message=quiet)
    final = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert resumed.iterations_done == final["averaged_updates"] == 4 * 4


def test_light_augmentation_halves_every_probability_and_resamples_linearly() -> None:
    reference, light = AUGMENTATION_PRESETS["reference"], AUGMENTATION_PRESETS["light"]
    for name in ("rotation_probability", "scaling_probability", "noise_probability", "blur_probability",
                 "gamma_probability", "low_resolution_probability"):
        assert getattr(light, name) == pytest.approx(getattr(reference, name) / 2)
    assert light.data_interpolation_order == 1
    transform = spatial_transform((16, 16, 16), light)
    assert transform.order_data == 1 and transform.p_rot_per_sample == pytest.approx(0.1)


def test_mirror_only_augmentation_leaves_intensities_alone_and_only_flips() -> None:
    transforms = build_training_transforms((16, 16, 16), augmentation_preset("mirror"))
    assert [type(transform) for transform in transforms[1:]] == [MirrorTransform]
    data = np.random.default_rng(0).normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
    result = compose(transforms)(data=data.copy(), seg=np.zeros_like(data))
    assert sorted(np.round(result["data"].ravel(), 5)) == sorted(np.round(data.ravel(), 5))
    with pytest.raises(UserError, match="reference"):
        augmentation_preset("strong")


def test_train_command_takes_the_recipe_and_refuses_a_bad_value_in_one_sentence(tmp_path: Path, capsys) -> None:
    write_tiny_work_folder(tmp_path)
    arguments = ["train", TINY_DATASET, "3d_fullres", "0", "--work-dir", str(tmp_path), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--validation-iterations", "1", "--num-workers", "0",
                 "--device", "cpu", "--no-validation-prediction", "--threads", "1"]
    assert cli_main([*arguments, "--weight-averaging", "1.5"]) == 2
    assert "--weight-averaging must be in (0, 1)" in capsys.readouterr().err
    recipe = ["--optimizer", "adamw", "--learning-rate", "0.003", "--schedule", "cosine", "--warmup", "0.1",
              "--weight-averaging", "0.99", "--augmentation", "light"]
    assert cli_main([*arguments, *recipe]) == 0
    checkpoint = torch.load(tmp_path / TINY_DATASET / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt",
                            map_location="cpu", weights_only=True)
    assert {key: checkpoint["settings"][key] for key in ("optimizer_name", "initial_learning_rate", "schedule",
                                                           "warmup_fraction", "weight_averaging_decay",
                                                           "augmentation")} == {
        "optimizer_name": "adamw", "initial_learning_rate": 0.003, "schedule": "cosine", "warmup_fraction": 0.1,
        "weight_averaging_decay": 0.99, "augmentation": "light"}
    assert "exp_avg" in next(iter(checkpoint["optimizer"]["state"].values()))


def test_a_plan_that_chose_a_short_schedule_recipe_trains_with_it_unless_told_otherwise(tmp_path: Path,
                                                                                       capsys) -> None:
    """``autoseg train`` takes the recipe of the plan's compute record; an option given on the command line wins over
    it, and ``--reference-recipe`` ignores it; ``autoseg run`` builds its folds' settings the same way."""
    write_tiny_work_folder(tmp_path)
    plans_file = tmp_path / TINY_DATASET / "plans.json"
    plans = json.loads(plans_file.read_text())
    cost = ConfigurationCost(0.1, 1200, 0, ("the memory-fitted plan",), recipe={"augmentation": "light",
                             "weight_averaging_decay": 0.99}, recipe_reasons=("1200 steps is a short schedule",))
    plans["compute"] = ComputePlan("cpu", 600.0, 120.0, 2000, {}, ("3d_fullres",), (0,), 120.0, (),
                                   {"3d_fullres": cost}).to_json()
    plans_file.write_text(json.dumps(plans))
    arguments = ["train", TINY_DATASET, "3d_fullres", "0", "--work-dir", str(tmp_path), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--validation-iterations", "1", "--num-workers", "0",
                 "--device", "cpu", "--no-validation-prediction", "--threads", "1"]
    final = tmp_path / TINY_DATASET / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"

    def trained_settings(*extra: str) -> dict:
        assert cli_main([*arguments, *extra]) == 0
        return torch.load(final, map_location="cpu", weights_only=True)["settings"]

    planned = trained_settings()
    assert planned["augmentation"] == "light" and planned["weight_averaging_decay"] == 0.99
    assert "training recipe for a short schedule" in capsys.readouterr().out
    overridden = trained_settings("--augmentation", "mirror")
    assert overridden["augmentation"] == "mirror" and overridden["weight_averaging_decay"] == 0.99
    reference = trained_settings("--reference-recipe")
    assert reference["augmentation"] == "reference" and "weight_averaging_decay" not in reference

    run_settings = training_settings(RunOptions(), 60.0, recipe=load_plans(plans_file).compute.recipe_for("3d_fullres"))
    assert run_settings.augmentation == "light" and run_settings.weight_averaging_decay == 0.99
    with pytest.raises(UserError, match="unknown training recipe setting"):
        training_settings(RunOptions(), 60.0, recipe={"epochs": 5})
