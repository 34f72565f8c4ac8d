"""The planning stage as one call: check the raw dataset, fingerprint it, and write its plans."""

from __future__ import annotations

from pathlib import Path

from autoseg.data.check import require_valid_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.pipeline.budget import ComputeFor
from autoseg.planning.planner import plan_experiment
from autoseg.records.case_signatures import require_unchanged_since_planning
from autoseg.records.dataset import RawDataset
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
    Returns the dataset, the plans, and whether the plans were kept.

    Raises:
        DatasetError: the raw dataset fails its check (every problem is listed).
    """
    dataset = require_valid_dataset(dataset_root, workers=workers, progress=progress)
    keep = keep_existing_plans and work.plans.is_file()
    if keep:
        # Kept plans (and what was trained from them) describe the cases fingerprinted with them: refuse to mix.
        require_unchanged_since_planning(
            work, dataset, how_to_proceed="add --replan to plan, preprocess and train again on the new cases, "
            "or restore the old files.",
        )
    write_json(work.dataset_json, dataset.to_dict())
    fingerprint = compute_fingerprint(dataset, work, workers=workers, force=recompute_fingerprint, progress=progress)
    if keep:
        return dataset, load_plans(work.plans), True
    compute = compute_for(dataset, fingerprint) if compute_for is not None else None
    plans = plan_experiment(fingerprint, dataset, preset=preset, gpu_memory_gb=gpu_memory_gb, compute=compute)
    write_json(work.plans, plans.to_json())
    return dataset, plans, False
