"""Predict many cases with preprocessing, network and export overlapping, in bounded memory.

Background worker processes preprocess the next cases and export the finished ones while the main process runs the
network. At most ``workers`` preprocessed cases wait for the network and at most ``workers`` predictions wait for
export, so memory stays bounded whatever the number of cases. With ``workers=0`` everything runs in order in this
process (simplest to debug, and what the Python API uses by default).

An ensemble of configurations is a list of predictors: each case is preprocessed once per member, predicted by
each, and the members' probabilities are averaged in the input's grid at export.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from autoseg.errors import UserError
from autoseg.inference.case_input import NetworkInput, preprocess_for_prediction
from autoseg.inference.export import export_members
from autoseg.io.images import file_ending
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.utils.files import write_json
from autoseg.utils.progress import ProgressDisplay, progress_display


class EnsembleMember(Protocol):
    """What the pipeline needs of one member (``autoseg.inference.predictor.Predictor`` is one)."""

    dataset: RawDataset
    configuration: Configuration

    @property
    def previous_configuration(self) -> Configuration | None: ...

    def predict_case_reported(self, case: NetworkInput) -> tuple[np.ndarray, dict | None]: ...


def _limit_worker_threads() -> None:
    """Workers get one thread each: the network in the main process already uses the cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def preprocess_for_members(image_paths: list[str], member_options: list[dict]) -> list[NetworkInput]:
    """One case preprocessed for every ensemble member (a worker job)."""
    return [preprocess_for_prediction(image_paths, **options) for options in member_options]


def _pending_work(
    items: Sequence[tuple[Sequence[str | os.PathLike[str]], str | os.PathLike[str]]], *, skip_existing: bool
) -> list[tuple[list[str], Path]]:
    work = []
    for image_paths, output_path in items:
        output_path = Path(output_path)
        # Outputs are written atomically, so an existing file is a finished one.
        if skip_existing and output_path.is_file():
            continue
        work.append(([str(path) for path in image_paths], output_path))
    return work


def _check_channel_counts(work: list[tuple[list[str], Path]], num_channels: int) -> None:
    for image_paths, _ in work:
        if len(image_paths) != num_channels:
            raise UserError(
                f"{image_paths[0]}: the model expects {num_channels} channel file(s) per case, "
                f"got {len(image_paths)}."
            )


@dataclass
class _CaseSteps:
    """What every case goes through: preprocessing per member (a worker job), the members' networks, export."""

    members: list[EnsembleMember]
    member_options: list[dict]  # arguments of preprocess_for_prediction, one per member (sent to workers)
    export_options: dict  # arguments of export_members besides the outputs (sent to workers)

    @classmethod
    def for_members(
        cls, members: list[EnsembleMember], *, save_probabilities: bool, postprocessing: PostprocessingDecision | None
    ) -> _CaseSteps:
        member_options = [
            {"configuration": member.configuration,
             "previous_configuration": member.previous_configuration}
            for member in members
        ]
        export_options = {
            "dataset": members[0].dataset, "save_probabilities": save_probabilities, "postprocessing": postprocessing
        }
        return cls(members, member_options, export_options)

    def predict(self, cases: list[NetworkInput], output_path: Path) -> list[tuple]:
        """Every member's probabilities; with test-time adaptation its report goes next to the label map."""
        outputs, reports = [], []
        for member, case in zip(self.members, cases, strict=True):
            probabilities, report = member.predict_case_reported(case)
            outputs.append((probabilities, case.properties, member.configuration))
            if report is not None:
                reports.append(report)
        if reports:
            write_json(adaptation_report_path(output_path), {
                "case": output_path.name, "fell_back": any(report["fell_back"] for report in reports),
                "members": reports,
            })
        return outputs


def adaptation_report_path(output_path: str | os.PathLike[str]) -> Path:
    """``OUT/CASE.adaptation.json`` next to the label map ``OUT/CASE.nii.gz``: what test-time adaptation did."""
    output_path = Path(output_path)
    ending = ".seg.nrrd" if output_path.name.endswith(".seg.nrrd") else file_ending(output_path) or output_path.suffix
    return output_path.with_name(output_path.name[: len(output_path.name) - len(ending)] + ".adaptation.json")


def _run_in_order(work: list[tuple[list[str], Path]], steps: _CaseSteps, bar: ProgressDisplay) -> list[Path]:
    """Every step of every case in this process, one case after the other."""
    written: list[Path] = []
    for image_paths, output_path in work:
        outputs = steps.predict(preprocess_for_members(image_paths, steps.member_options), output_path)
        export_members(outputs, output_path=output_path, **steps.export_options)
        written.append(output_path)
        bar.update()
    bar.close()
    return written


class _OverlappedRun:
    """Workers preprocess up to ``lookahead`` cases ahead of the network and export up to ``lookahead`` behind it."""

    def __init__(
        self,
        work: list[tuple[list[str], Path]],
        steps: _CaseSteps,
        bar: ProgressDisplay,
        executor: concurrent.futures.Executor,
        *,
        lookahead: int,
    ) -> None:
        self.steps = steps
        self.bar = bar
        self.executor = executor
        self.lookahead = lookahead
        self.upcoming = iter(work)
        self.queued_preprocessing: collections.deque = collections.deque()
        self.queued_exports: collections.deque = collections.deque()
        self.written: list[Path] = []

    def run(self) -> list[Path]:
        self._fill_preprocessing_queue()
        while self.queued_preprocessing:
            output_path, future = self.queued_preprocessing.popleft()
            cases = future.result()
            self._fill_preprocessing_queue()
            outputs = self.steps.predict(cases, output_path)
            del cases
            while len(self.queued_exports) >= self.lookahead:
                self._finish_oldest_export()
            self.queued_exports.append(
                (output_path,
                 self.executor.submit(export_members, outputs, output_path=output_path, **self.steps.export_options))
            )
            del outputs
        while self.queued_exports:
            self._finish_oldest_export()
        return self.written

    def _fill_preprocessing_queue(self) -> None:
        while len(self.queued_preprocessing) < self.lookahead:
            item = next(self.upcoming, None)
            if item is None:
                return
            image_paths, output_path = item
            self.queued_preprocessing.append(
                (output_path, self.executor.submit(preprocess_for_members, image_paths, self.steps.member_options))
            )

    def _finish_oldest_export(self) -> None:
        output_path, future = self.queued_exports.popleft()
        future.result()
        self.written.append(output_path)
        self.bar.update()


def _run_overlapped(
    work: list[tuple[list[str], Path]], steps: _CaseSteps, bar: ProgressDisplay, *, workers: int
) -> list[Path]:
    """Preprocessing and export in ``workers`` worker processes, overlapping the network in this one."""
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and can deadlock
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_limit_worker_threads
    )
    try:
        # ``workers`` cases preprocessed ahead, and predictions waiting for export
        written = _OverlappedRun(work, steps, bar, executor, lookahead=workers).run()
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    return written


def run_prediction_pipeline(
    members: Sequence[EnsembleMember],
    items: Sequence[tuple[Sequence[str | os.PathLike[str]], str | os.PathLike[str]]],
    *,
    save_probabilities: bool = False,
    postprocessing: PostprocessingDecision | None = None,
    skip_existing: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Segment every ``(image_paths, output_path)`` item; returns the output paths written in this run.

    Args:
        members: one predictor, or several (configurations of one dataset) whose probabilities are averaged.
        postprocessing: a ``postprocessing.json`` decision applied to every label map.

    Raises the first error of any case (a ``UserError`` names the bad file); outputs already written stay valid,
    so a rerun with ``skip_existing`` continues where it stopped.
    """
    members = list(members)
    work = _pending_work(items, skip_existing=skip_existing)
    _check_channel_counts(work, members[0].dataset.num_channels)
    steps = _CaseSteps.for_members(members, save_probabilities=save_probabilities, postprocessing=postprocessing)
    bar = progress_display(total=len(work), description="predict", enabled=progress)
    if workers <= 0:
        return _run_in_order(work, steps, bar)
    return _run_overlapped(work, steps, bar, workers=workers)
