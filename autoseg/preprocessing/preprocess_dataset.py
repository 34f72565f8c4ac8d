"""Preprocess every training case of a dataset for some configurations: parallel, bounded in memory, resumable."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import UserError
from autoseg.io import case_arrays
from autoseg.preprocessing.storage import (
    read_complete_case_properties,
    remove_partial_files,
    write_preprocessed_case,
)
from autoseg.records.case_signatures import case_signatures
from autoseg.records.dataset import Case, RawDataset
from autoseg.records.fingerprint import load_fingerprint
from autoseg.records.plans import Configuration, Plans
from autoseg.records.preprocessed_case import PreprocessedCase
from autoseg.records.work_folder import WorkFolder
from autoseg.transforms.case import preprocess_case
from autoseg.utils.files import atomic_path, describe_file_system_error, write_json
from autoseg.utils.parts import shard
from autoseg.utils.progress import progress_display


class PreprocessingError(UserError):
    """Some cases could not be preprocessed; the message names each one and why."""


def preprocessing_signature(configuration: Configuration, *, ignore_label: int | None = None) -> str:
    """Hash of everything that changes the preprocessed arrays (and the sampled locations); a case made under other
    settings is redone."""
    relevant = {
        "ignore_label": ignore_label,  # with one, the annotated voxels' locations are sampled too
        "transpose_forward": list(configuration.transpose_forward),
        "dimension": configuration.dimension,
        "spacing": list(configuration.spacing),
        "normalization": [entry.to_json() for entry in configuration.normalization],
        "resampling": configuration.resampling.to_json(),
        # Which axis is resampled on its own is decided per case since this rule (was: the plan's "anisotropic").
        "separate_axis": "per case",
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class CaseTask:
    """One case for one configuration: plain data, cheap to send to a worker process."""

    identifier: str
    images: tuple[str, ...]
    label: str | None
    output_folder: str
    configuration: Configuration
    classes: tuple[int, ...]
    signature: str
    ignore_label: int | None = None
    # Read in the parent (a worker started by spawn would not see a threshold changed at run time, as tests do).
    compress_from_bytes: int = dataclasses.field(default_factory=lambda: case_arrays.COMPRESS_FROM_BYTES)


@dataclasses.dataclass(frozen=True)
class CaseOutcome:
    identifier: str
    output_folder: str
    error: str | None = None
    is_user_error: bool = False
    is_file_system_error: bool = False  # a full disk or read-only folder: the same for every case, said once


# Writes go through atomic_path: preprocessed cases without fsync (they can be regenerated), ground-truth copies
# with it (~4-6 ms each here, more than computing a small case). A few writer threads per worker overlap the writes
# (the filesystem commits concurrent fsyncs together: measured 4x faster for 200 small files with 4 threads); at
# most MAX_PENDING_WRITES finished cases wait in memory.
WRITER_THREADS = 4
MAX_PENDING_WRITES = 4
# Small cases travel to the workers in chunks (fewer round trips, overlapping writes); a chunk holds at most this
# many input voxels and CHUNK_MAXIMUM_CASES cases, and a large case always travels alone.
CHUNK_VOXEL_BUDGET = 8_000_000
CHUNK_MAXIMUM_CASES = 16


def _outcome_from_error(task: CaseTask, error: BaseException) -> CaseOutcome:
    if isinstance(error, UserError):
        return CaseOutcome(task.identifier, task.output_folder, f"case {task.identifier}: {error}", True)
    sentence = describe_file_system_error(error) if isinstance(error, OSError) else None
    if sentence is not None:
        return CaseOutcome(task.identifier, task.output_folder, sentence, True, is_file_system_error=True)
    details = "".join(traceback.format_exception(error)).rstrip()
    return CaseOutcome(task.identifier, task.output_folder, f"case {task.identifier}: {details}", False)


def _store_case(task: CaseTask, data: np.ndarray, segmentation: np.ndarray | None, properties: dict) -> None:
    write_preprocessed_case(task.output_folder, task.identifier, data, segmentation, properties,
                            patch_size=task.configuration.patch_size, compress_from_bytes=task.compress_from_bytes)


def run_case_chunk(tasks: Sequence[CaseTask]) -> list[CaseOutcome]:
    """Preprocess and store some cases; errors come back as messages naming the case (workers never die).

    Cases are computed one after the other; each finished case is handed to a writer thread (arrays first, then
    the sidecar), and the chunk returns only when every write is complete.
    """
    # Keyed by folder too: a chunk may hold the same case for two configurations.
    outcomes: dict[tuple[str, str], CaseOutcome] = {}
    pending: list[tuple[CaseTask, concurrent.futures.Future]] = []
    slots = threading.BoundedSemaphore(MAX_PENDING_WRITES)
    with concurrent.futures.ThreadPoolExecutor(max_workers=WRITER_THREADS) as writer:
        for task in tasks:
            try:
                data, segmentation, properties = preprocess_case(
                    task.images,
                    task.label,
                    configuration=task.configuration,
                    identifier=task.identifier,
                    classes=task.classes,
                    ignore_label=task.ignore_label,
                )
                properties["preprocessing_signature"] = task.signature
            except Exception as error:  # reported with the case name by the parent
                outcomes[task.output_folder, task.identifier] = _outcome_from_error(task, error)
                continue
            slots.acquire()
            future = writer.submit(_store_case, task, data, segmentation, properties)
            future.add_done_callback(lambda _: slots.release())
            del data, segmentation, properties
            pending.append((task, future))
        for task, future in pending:
            error = future.exception()
            outcomes[task.output_folder, task.identifier] = _outcome_from_error(task, error) if error else CaseOutcome(
                task.identifier, task.output_folder
            )
    return [outcomes[task.output_folder, task.identifier] for task in tasks]


def chunk_tasks(tasks: Sequence[CaseTask], voxels: dict[str, int]) -> list[list[CaseTask]]:
    """Group consecutive small cases (``voxels`` per case id; unknown cases count as large) into chunks."""
    chunks: list[list[CaseTask]] = []
    current: list[CaseTask] = []
    current_voxels = 0
    for task in tasks:
        size = voxels.get(task.identifier, CHUNK_VOXEL_BUDGET)
        if current and (current_voxels + size > CHUNK_VOXEL_BUDGET or len(current) >= CHUNK_MAXIMUM_CASES):
            chunks.append(current)
            current, current_voxels = [], 0
        current.append(task)
        current_voxels += size
    if current:
        chunks.append(current)
    return chunks


def _case_voxels_from_fingerprint(work_folder: WorkFolder, channels: int) -> dict[str, int]:
    """Input voxels per case from ``fingerprint.json`` (written before planning); empty if unavailable."""
    try:
        cases = load_fingerprint(work_folder.fingerprint).cases
        return {identifier: int(np.prod(record.shape)) * channels for identifier, record in cases.items()}
    except (UserError, OSError, ValueError, TypeError):
        return {}


def _case_is_done(task: CaseTask, channels: int) -> bool:
    properties = read_complete_case_properties(
        task.output_folder, task.identifier, expect_segmentation=task.label is not None, channels=channels
    )
    return properties is not None and properties.get("preprocessing_signature") == task.signature


def copy_ground_truth(dataset: RawDataset, work_folder: WorkFolder, cases: Sequence[Case] | None = None) -> int:
    """Copy every training label map (or those of ``cases``: one part of a split run), byte for byte (so in its
    original geometry), to ``ground_truth/``.

    Returns how many files were copied; files already there with the same size are kept. Copies run in a few
    threads because each atomic write waits for its fsync. A part removes only its own cases' temporaries.
    """
    folder = work_folder.ground_truth
    folder.mkdir(parents=True, exist_ok=True)
    chosen = dataset.training_cases if cases is None else cases
    names = None if cases is None else [f"{case.identifier}{dataset.file_ending}" for case in chosen]
    remove_partial_files(folder, names)
    copies = []
    for case in chosen:
        if case.label is None:
            continue
        destination = folder / f"{case.identifier}{dataset.file_ending}"
        if destination.is_file() and destination.stat().st_size == Path(case.label).stat().st_size:
            continue
        copies.append((case.label, destination))

    def copy(pair: tuple[str, Path]) -> None:
        with atomic_path(pair[1]) as temporary:
            shutil.copyfile(pair[0], temporary)

    with concurrent.futures.ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
        list(pool.map(copy, copies))
    return len(copies)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with every module already imported (this matters for datasets of small
    # cases, where spawning would cost more than the work); torch's thread pools are not fork-safe, so a parent
    # that has imported torch (e.g. a notebook) gets spawn instead.
    if "torch" not in sys.modules and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_chunks(
    chunks: list[list[CaseTask]], *, workers: int, show_progress: bool, background_work: Callable[[], int]
) -> tuple[list[CaseOutcome], int]:
    """Run every chunk (in ``workers`` processes when there is more than one chunk) while ``background_work`` runs
    in a thread; returns the outcomes and the background result."""
    total = sum(len(chunk) for chunk in chunks)
    parallel = workers > 1 and len(chunks) > 1
    outcomes: list[CaseOutcome] = []
    with contextlib.ExitStack() as stack:
        # The pool forks its workers here, before this process starts any thread (forking a process that runs
        # threads can copy a lock held by another thread into the child).
        pool = stack.enter_context(_pool_context().Pool(processes=min(workers, len(chunks)))) if parallel else None
        background = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        background_result = background.submit(background_work)
        progress = stack.enter_context(progress_display(total=total, description="preprocess", enabled=show_progress))
        # Results are small records, so memory is bounded by what `workers` processes hold at once: one large case
        # each, or a chunk of small ones (CHUNK_VOXEL_BUDGET), whatever the dataset size.
        results = pool.imap_unordered(run_case_chunk, chunks, chunksize=1) if pool else map(run_case_chunk, chunks)
        for chunk_outcomes in results:
            outcomes.extend(chunk_outcomes)
            # Stored cases only: after a failure the display stops short (and a log gets no final line), leaving the
            # error that follows to say what happened.
            progress.update(sum(not outcome.error for outcome in chunk_outcomes))
        return outcomes, background_result.result()


def _case_file_names(cases: Sequence[Case]) -> list[str]:
    """Every file name a preprocessed case of ``cases`` may have (for removing one part's temporaries only)."""
    stored = [PreprocessedCase.at(".", case.identifier) for case in cases]
    return [path.name for case in stored for path in (*case.array_paths, case.properties_path)]


def _tasks_to_run(
    dataset: RawDataset, plans: Plans, work_folder: WorkFolder, data_names: list[str], *, overwrite: bool,
    cases: Sequence[Case], whole: bool = True,
) -> tuple[list[CaseTask], dict[str, dict[str, int]]]:
    """The tasks of ``cases`` still to run for each configuration, and ``{CONFIG: {"preprocessed": 0, "skipped":
    m}}``; unless ``whole`` (one part of a split run) only these cases' temporaries are removed."""
    classes = tuple(dataset.foreground_labels)
    counts: dict[str, dict[str, int]] = {}
    tasks: list[CaseTask] = []
    inputs = case_signatures(dataset)
    for name in data_names:
        configuration = plans.configuration(name)
        output_folder = work_folder.preprocessed(name)
        output_folder.mkdir(parents=True, exist_ok=True)
        remove_partial_files(output_folder, None if whole else _case_file_names(cases))
        signature = preprocessing_signature(configuration, ignore_label=dataset.ignore_label)
        skipped = 0
        for case in cases:
            # A case whose raw files changed since it was stored is redone, even under unchanged settings.
            task = CaseTask(case.identifier, tuple(case.images), case.label, str(output_folder),
                            configuration, classes, f"{signature}-{inputs[case.identifier]}", dataset.ignore_label)
            if not overwrite and _case_is_done(task, dataset.num_channels):
                skipped += 1
                continue
            tasks.append(task)
        counts[name] = {"preprocessed": 0, "skipped": skipped}
    return tasks, counts


def _raise_for_failures(outcomes: list[CaseOutcome], dataset: RawDataset) -> None:
    """Raise one error naming the failed cases, if any.

    A full disk or read-only folder is said once; otherwise up to 20 cases are listed, as a ``PreprocessingError``
    when every failure is the input's fault and as a ``RuntimeError`` when one of them is a bug.
    """
    failures = [outcome for outcome in outcomes if outcome.error]
    if not failures:
        return
    failures.sort(key=lambda outcome: outcome.identifier)
    file_system = next((outcome.error for outcome in failures if outcome.is_file_system_error), None)
    if file_system is not None:
        raise PreprocessingError(f"{file_system.rstrip('.')}; {len(failures)} case(s) were not stored.")
    listed = "\n".join(f"  {outcome.error}" for outcome in failures[:20])
    more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
    message = f"{len(failures)} case(s) of {dataset.root} failed (the others are stored):\n{listed}{more}"
    if all(outcome.is_user_error for outcome in failures):
        raise PreprocessingError(message)
    raise RuntimeError(message)


def preprocess_dataset(
    dataset: RawDataset,
    *,
    plans: Plans,
    work_folder: WorkFolder,
    configuration_names: Sequence[str] | None = None,
    workers: int = 2,
    overwrite: bool = False,
    show_progress: bool = True,
    part_id: int = 0,
    num_parts: int = 1,
) -> dict:
    """Preprocess every training case for each configuration into ``WORK/<dataset>/preprocessed/CONFIG/``.

    Finished cases (sidecar present, arrays loadable with the recorded shapes, same preprocessing settings) are
    skipped unless ``overwrite``; half-written ones are redone. Label maps are copied to ``ground_truth/``.

    With ``num_parts`` > 1 only every ``num_parts``-th case (sorted by identifier) from ``part_id`` on is done,
    its ground truth included: parts write disjoint files, so they may run at the same time (``dataset.json`` is
    written by each, atomically and with the same content).

    Returns:
        ``{"configurations": {CONFIG: {"preprocessed": n, "skipped": m}}, "ground_truth_copied": k}``.

    Raises:
        PreprocessingError: some cases failed (every other case is still stored); the message names them.
    """
    work_folder.root.mkdir(parents=True, exist_ok=True)
    write_json(work_folder.dataset_json, dataset.to_dict())
    ordered = dataset.training_cases if num_parts == 1 else sorted(dataset.training_cases, key=lambda c: c.identifier)
    cases = shard(ordered, part_id=part_id, num_parts=num_parts)
    names = list(configuration_names) if configuration_names else plans.data_configurations()
    data_names = list(dict.fromkeys(plans.data_configuration(name) for name in names))
    tasks, per_configuration = _tasks_to_run(dataset, plans, work_folder, data_names, overwrite=overwrite,
                                             cases=cases, whole=num_parts == 1)
    chunks = chunk_tasks(tasks, _case_voxels_from_fingerprint(work_folder, dataset.num_channels))
    outcomes, ground_truth_copied = _run_chunks(
        chunks, workers=workers, show_progress=show_progress,  # the ground truth's copies overlap the workers
        background_work=functools.partial(copy_ground_truth, dataset, work_folder, None if num_parts == 1 else cases),
    )
    for outcome in outcomes:
        if not outcome.error:
            per_configuration[Path(outcome.output_folder).name]["preprocessed"] += 1
    _raise_for_failures(outcomes, dataset)
    return {"configurations": per_configuration, "ground_truth_copied": ground_truth_copied}
