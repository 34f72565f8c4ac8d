"""The label round trip of ``autoseg.fingerprint.resolution``, made affordable for CT-size volumes.

``round_trip_dice_per_class`` here has the signature and meaning of ``resolution.round_trip_dice_per_class`` (per
coarsening factor, per foreground class, the mean round-trip Dice over a sample of training cases) and returns the
same numbers on datasets of ordinary size: each sampled label map is read once (not once per factor), the cases
run in parallel processes, and a case's integer label map is converted once. Only a case larger than
``LARGE_CASE_VOXELS`` is approximated: it is cropped to its labels' bounding box plus a margin of two of the
coarsest voxels before resampling (background far from every label stays background; only the coarse grid's phase
moves), and a dataset of such cases samples ``LARGE_SAMPLED_CASES`` of them. Hippocampus and HC18 cases are
hundreds of times smaller than the threshold, so their plans do not change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from autoseg.fingerprint.resolution import SAMPLED_CASES, _round_trip
from autoseg.fingerprint.windowed_resampling import LabelWindow, OutsideWindow, foreground_window, resample_window
from autoseg.io.images import read_image, read_image_header
from autoseg.records.dataset import RawDataset
from autoseg.transforms.resampling import coarsened_spacing, resampled_shape
from autoseg.utils.parallel import parallel_map

LARGE_CASE_VOXELS = 2**24  # 16.8 M voxels, a 512 x 512 x 64 CT volume; a Hippocampus case has 0.04 M, HC18 0.4 M
LARGE_SAMPLED_CASES = 4  # CT volumes: the mean over four cases, each cropped to its organs, still separates the grids


@dataclasses.dataclass(frozen=True)
class CaseRoundTrip:
    """One sampled case's round trips (plain data, so it crosses process boundaries cheaply)."""

    label: str
    fullres_spacing: tuple[float, ...]
    factors: tuple[float, ...]
    is_2d: bool
    ignore_label: int | None


def _target_spacing(task: CaseRoundTrip, factor: float, spacing: Sequence[float]) -> list[float]:
    target = coarsened_spacing(task.fullres_spacing, factor, keep_first=task.is_2d)
    if task.is_2d:
        target[0] = spacing[0]
    return target


def window_dice(label: LabelWindow, back: LabelWindow, ignore_label: int | None) -> dict[int, float]:
    """``resolution._round_trip``'s Dice per foreground class, counted in the box that holds both windows."""
    low = [min(a, b) for a, b in zip(label.start, back.start, strict=True)]
    high = [max(a, b) for a, b in zip(label.stop, back.stop, strict=True)]
    truth_box = np.zeros([b - a for a, b in zip(low, high, strict=True)], dtype=label.array.dtype)
    found_box = np.zeros_like(truth_box)
    for window, box in ((label, truth_box), (back, found_box)):
        box[tuple(slice(a - o, b - o) for a, b, o in zip(window.start, window.stop, low, strict=True))] = window.array
    scores = {}
    for value in np.unique(label.array):
        if value <= 0 or value == ignore_label:
            continue
        truth, found = truth_box == value, found_box == value
        scores[int(value)] = float(2 * np.count_nonzero(truth & found) / (truth.sum() + found.sum()))
    return scores


def round_trip(
    label: np.ndarray, window: LabelWindow | None, spacing: Sequence[float], target: Sequence[float],
    ignore_label: int | None,
) -> dict[int, float]:
    """``resolution._round_trip`` of ``label`` (whose foreground window is ``window``), in the window when it can."""
    if window is None:
        return _round_trip(label, spacing, target, ignore_label)
    orders = [1] * label.ndim
    try:
        coarse = resample_window(window, resampled_shape(label.shape, spacing, target), axis_orders=orders)
        back = resample_window(coarse, label.shape, axis_orders=orders)
    except OutsideWindow:
        return _round_trip(label, spacing, target, ignore_label)
    return window_dice(window, back, ignore_label)


def case_round_trips(task: CaseRoundTrip) -> list[dict[int, float]]:
    """Per factor (in order), the case's Dice per foreground class after the round trip."""
    image = read_image(task.label)
    spacing = image.geometry.spacing
    array = np.rint(image.array).astype(np.int16)
    window = foreground_window(array)
    return [
        round_trip(array, window, spacing, _target_spacing(task, factor, spacing), task.ignore_label)
        for factor in task.factors
    ]


def round_trip_dice_per_class(
    dataset: RawDataset, fullres_spacing: Sequence[float], factors: Sequence[float], *, is_2d: bool,
    sampled_cases: int = SAMPLED_CASES, workers: int = 2,
) -> dict[float, dict[int, float]]:
    """Per coarsening factor, each foreground class's mean round-trip Dice over a sample of training cases.

    As ``autoseg.fingerprint.resolution.round_trip_dice_per_class`` (see this module's docstring for what differs
    on cases larger than ``LARGE_CASE_VOXELS``); ``workers`` processes share the sampled cases of large datasets.
    """
    cases = [case for case in dataset.training_cases if case.label]
    if not cases:
        return {float(factor): {} for factor in factors}
    large = math.prod(read_image_header(cases[0].label).shape) > LARGE_CASE_VOXELS
    count = min(sampled_cases, LARGE_SAMPLED_CASES) if large else sampled_cases
    picks = sorted({int(index) for index in np.linspace(0, len(cases) - 1, min(count, len(cases)))})
    tasks = [
        CaseRoundTrip(str(cases[index].label), tuple(float(v) for v in fullres_spacing),
                      tuple(float(f) for f in factors), is_2d, dataset.ignore_label)
        for index in picks
    ]
    per_case = list(parallel_map(case_round_trips, tasks, workers=workers if large else 1,
                                 description="label round trip", progress=False))
    result = {}
    for position, factor in enumerate(factors):
        per_class: dict[int, list[float]] = {}
        for scores in per_case:
            for value, dice in scores[position].items():
                per_class.setdefault(value, []).append(dice)
        result[float(factor)] = {value: float(np.mean(scores)) for value, scores in sorted(per_class.items())}
    return result
