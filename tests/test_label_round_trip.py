"""The planner's label round trip at CT scale: the same Dice as before, kept in the working folder, timed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.data.raw_folder import scan_raw_dataset
from autoseg.fingerprint import label_round_trip, resolution
from autoseg.fingerprint.windowed_resampling import foreground_window
from autoseg.records.label_round_trip import cached_round_trip, round_trip_key, write_round_trip
from autoseg.records.work_folder import WorkFolder
from autoseg.transforms.resampling import coarsened_spacing

FACTORS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def _random_label(rng: np.random.Generator) -> np.ndarray:
    """Boxes of three classes, some a voxel or two wide (they vanish on coarse grids and must be kept somewhere)."""
    shape = tuple(int(v) for v in rng.integers(3, 30, 3))
    label = np.zeros(shape, dtype=np.int16)
    for value in (1, 2, 3):
        for _ in range(int(rng.integers(1, 3))):
            low = [int(rng.integers(0, size)) for size in shape]
            box = tuple(slice(a, min(size, a + int(rng.integers(1, 6)))) for a, size in zip(low, shape, strict=True))
            label[box] = value
    return label


def test_the_windowed_round_trip_gives_the_full_round_trips_dice_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        label = _random_label(rng)
        spacing = [float(v) for v in rng.uniform(0.3, 3.0, 3)]
        window = foreground_window(label)
        for factor in FACTORS:
            target = coarsened_spacing(spacing, factor, keep_first=False)
            expected = resolution._round_trip(label, spacing, target, None)
            assert label_round_trip.round_trip(label, window, spacing, target, None) == expected


def test_the_round_trip_of_real_datasets_is_unchanged(hippocampus_root, hc18_root, copy_cases) -> None:
    for source, spacing, is_2d in ((hippocampus_root, [1.0, 1.0, 1.0], False), (hc18_root, [1.0, 0.13, 0.13], True)):
        dataset, _ = scan_raw_dataset(copy_cases(source, 5))
        old = resolution.round_trip_dice_per_class(dataset, spacing, FACTORS, is_2d=is_2d)
        new = label_round_trip.round_trip_dice_per_class(dataset, spacing, FACTORS, is_2d=is_2d)
        assert repr(new) == repr(old)


def test_an_organ_is_resampled_inside_its_window_with_the_same_dice() -> None:
    z, y, x = np.mgrid[:20, :60, :60]
    label = (((z - 10) / 6) ** 2 + ((y - 20) / 9) ** 2 + ((x - 25) / 12) ** 2 < 1).astype(np.int16)
    label[12:14, 40:43, 44:46] = 2
    spacing = [3.0, 0.8, 0.8]
    window = foreground_window(label)
    assert window is not None and window.array.size < label.size / 5
    for factor in FACTORS:
        target = coarsened_spacing(spacing, factor, keep_first=False)
        assert label_round_trip.round_trip(label, window, spacing, target, None) == resolution._round_trip(
            label, spacing, target, None)


def _made_up_machine(monkeypatch) -> None:
    class MadeUpMachine:  # a made-up step cost instead of measuring this machine
        device = torch.device("cpu")

        def step_seconds(self, configuration):
            return 0.05 + 1e-6 * configuration.batch_size * math.prod(configuration.patch_size)

    monkeypatch.setattr("autoseg.pipeline.budget.machine_costs", lambda *args, **kwargs: MadeUpMachine())


def test_plan_prints_its_timings_and_keeps_the_round_trip_for_the_next_plan(
    monkeypatch, tmp_path, copy_cases, hc18_root, capsys
) -> None:
    _made_up_machine(monkeypatch)
    root = copy_cases(hc18_root, 6)
    work = tmp_path / "work"
    arguments = ["plan", str(root), "--work-dir", str(work), "--time-budget", "10m", "--workers", "1"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert any(line.startswith("check ") and ", fingerprint " in line and "(label round trip " in line
               and line.endswith(" s)") for line in first.splitlines()), first
    folder = WorkFolder.for_dataset(str(work), root)
    plans = folder.plans.read_bytes()
    assert folder.label_round_trip.is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the round trip was computed again")

    monkeypatch.setattr("autoseg.pipeline.budget.round_trip_dice_per_class", must_not_run)
    folder.plans.unlink()
    assert main(arguments) == 0
    assert "(label round trip cached)" in capsys.readouterr().out
    before, after = json.loads(plans), json.loads(folder.plans.read_text(encoding="utf-8"))
    key = "label_dice_at_coarser_spacing"
    assert after["compute"][key] == before["compute"][key]
    assert after["configurations"] == before["configurations"]


@pytest.mark.parametrize("changed", ["spacing", "factors", "signature"])
def test_a_stored_round_trip_is_used_only_for_the_same_inputs(tmp_path, changed) -> None:
    key = round_trip_key("abc", [1.0, 0.5, 0.5], [2.0, 4.0])
    path = tmp_path / "label_round_trip.json"
    dice = {2.0: {1: 0.9912345678901234, 2: 0.5}, 4.0: {1: 0.97, 2: 0.1}}
    write_round_trip(path, key, dice)
    assert cached_round_trip(path, key) == dice
    other = {"spacing": round_trip_key("abc", [1.0, 0.6, 0.5], [2.0, 4.0]),
             "factors": round_trip_key("abc", [1.0, 0.5, 0.5], [2.0]),
             "signature": round_trip_key("abd", [1.0, 0.5, 0.5], [2.0, 4.0])}[changed]
    assert cached_round_trip(path, other) is None
