"""The planning stage as one call: check the raw dataset, fingerprint it, and write its plans."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from autoseg.data.check import require_valid_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.pipeline.budget import ComputeFor
from autoseg.planning.layout import ComputeBudget
from autoseg.planning.planner import plan_experiment
from autoseg.records.case_signatures import require_unchanged_since_planning
from autoseg.records.dataset import RawDataset
from autoseg.records.label_round_trip import PerClassDice, cached_round_trip, round_trip_key, write_round_trip
from autoseg.records.plans import Plans, load_plans
from autoseg.records.work_folder import WorkFolder
from autoseg.utils.files import write_json


def plan_dataset(
    dataset_root: str | Path,
    work: WorkFolder,
    *,
    preset: str = "default",
    gpu_memory_gb: float | None = None,
    workers: int = 2,
    recompute_fingerprint: bool = False,
    keep_existing_plans: bool = False,
    progress: bool = True,
    compute_for: ComputeFor | None = None,
) -> tuple[RawDataset, Plans, bool]:
    """Write ``dataset.json``, ``fingerprint.json`` and ``plans.json`` into ``work`` (the dataset's working folder).

    With ``keep_existing_plans`` an existing ``plans.json`` (possibly hand-edited) is loaded instead of replaced.
    With ``compute_for`` the plans are fitted to a time budget on a measured machine (``autoseg.pipeline.budget``).
    Returns the dataset, the plans, and whether the plans were kept. Prints where the time went, as
    ``check 9 s, fingerprint 14 s, plan 21 s (label round trip 12 s)``; the label round trip is kept in the working
    folder (``label_round_trip.json``) and read back by a later plan of the same labels.

    Raises:
        DatasetError: the raw dataset fails its check (every problem is listed).
    """
    clock = StartupClock()
    dataset = require_valid_dataset(dataset_root, workers=workers, progress=progress)
    clock.lap("check")
    keep = keep_existing_plans and work.plans.is_file()
    if keep:
        # Kept plans (and what was trained from them) describe the cases fingerprinted with them: refuse to mix.
        require_unchanged_since_planning(
            work, dataset, how_to_proceed="add --replan to plan, preprocess and train again on the new cases, "
            "or restore the old files.",
        )
    write_json(work.dataset_json, dataset.to_dict())
    fingerprint = compute_fingerprint(dataset, work, workers=workers, force=recompute_fingerprint, progress=progress)
    clock.lap("fingerprint")
    if keep:
        print(clock.line(plan="kept"), flush=True)
        return dataset, load_plans(work.plans), True
    compute = compute_for(dataset, fingerprint) if compute_for is not None else None
    if compute is not None:
        compute = remember_round_trip(compute, work, str(fingerprint.inputs_signature), clock)
    plans = plan_experiment(fingerprint, dataset, preset=preset, gpu_memory_gb=gpu_memory_gb, compute=compute)
    write_json(work.plans, plans.to_json())
    clock.lap("plan")
    print(clock.line(), flush=True)
    return dataset, plans, False


class StartupClock:
    """Seconds spent in check, fingerprint and plan, and in the label round trip within the plan."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.round_trip: float | None = None  # None: not run here
        self.round_trip_cached = False

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.started
        self.started = now

    def line(self, *, plan: str | None = None) -> str:
        """``check 9 s, fingerprint 14 s, plan 21 s (label round trip 12 s)``."""
        parts = [f"{stage} {seconds:.0f} s" for stage, seconds in self.seconds.items()]
        if plan is not None:
            parts.append(f"plan {plan}")
        line = ", ".join(parts)
        if self.round_trip_cached:
            return f"{line} (label round trip cached)"
        return line if self.round_trip is None else f"{line} (label round trip {self.round_trip:.0f} s)"


def remember_round_trip(compute: ComputeBudget, work: WorkFolder, inputs_signature: str,
                        clock: StartupClock) -> ComputeBudget:
    """``compute`` whose label round trip is read from the working folder when it was done for the same labels,
    spacing and factors, else done, timed and stored there."""
    round_trip = compute.label_round_trip

    def remembered(spacing: list[float], factors: Sequence[float]) -> PerClassDice:
        key = round_trip_key(inputs_signature, spacing, factors)
        if (cached := cached_round_trip(work.label_round_trip, key)) is not None:
            clock.round_trip_cached = True
            return cached
        started = time.perf_counter()
        result = round_trip(spacing, factors)
        clock.round_trip = (clock.round_trip or 0.0) + time.perf_counter() - started
        write_round_trip(work.label_round_trip, key, result)
        return result

    return dataclasses.replace(compute, label_round_trip=remembered)
