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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autoseg.errors import UserError
from autoseg.inference.case_input import NetworkInput, preprocess_for_prediction
from autoseg.inference.export import export_members, named_label_values
from autoseg.inference.predictor import MemberPrediction
from autoseg.inference.quality import LabelMapStatistics, NetworkSignals, assess_case
from autoseg.inference.quality_table import QUALITY_FILE, quality_row, write_quality_table
from autoseg.io.images import file_ending
from autoseg.records.dataset import RawDataset
from autoseg.records.plans import Configuration
from autoseg.records.postprocessing import PostprocessingDecision
from autoseg.records.quality_model import QualityModel
from autoseg.utils.files import write_json
from autoseg.utils.progress import ProgressDisplay, progress_display


class EnsembleMember(Protocol):
    """What the pipeline needs of one member (``autoseg.inference.predictor.Predictor`` is one)."""

    dataset: RawDataset
    configuration: Configuration

    @property
    def previous_configuration(self) -> Configuration | None: ...

    @property
    def quality_targets(self) -> tuple[int, ...]: ...

    def predict_case_assessed(self, case: NetworkInput) -> MemberPrediction: ...


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
    """What every case goes through: preprocessing per member (a worker job), the members' networks, export, and
    the quality estimate made of the networks' signals and the written label map's statistics."""

    members: list[EnsembleMember]
    member_options: list[dict]  # arguments of preprocess_for_prediction, one per member (sent to workers)
    export_options: dict  # arguments of export_members besides the outputs (sent to workers)
    quality: QualityModel | None
    assess: bool
    flag_below: float | None
    quality_rows: dict[Path, list[dict[str, str]]] = field(default_factory=dict)  # per output folder

    @classmethod
    def for_members(
        cls, members: list[EnsembleMember], *, save_probabilities: bool, postprocessing: PostprocessingDecision | None,
        quality: QualityModel | None,
    ) -> _CaseSteps:
        member_options = [
            {"configuration": member.configuration,
             "previous_configuration": member.previous_configuration}
            for member in members
        ]
        options = getattr(members[0], "options", None)
        assess = bool(getattr(options, "quality", False))
        export_options = {
            "dataset": members[0].dataset, "save_probabilities": save_probabilities, "postprocessing": postprocessing,
            "statistics_targets": members[0].quality_targets if assess else None,
        }
        return cls(members, member_options, export_options, quality, assess, getattr(options, "flag_below", None))

    def predict(self, cases: list[NetworkInput], output_path: Path) -> tuple[list[tuple], NetworkSignals | None]:
        """Every member's probabilities and the members' quality signals (None when off); with test-time adaptation
        its report goes next to the label map."""
        outputs, reports, signals = [], [], []
        for member, case in zip(self.members, cases, strict=True):
            prediction = member.predict_case_assessed(case)
            outputs.append((prediction.probabilities, case.properties, member.configuration))
            if prediction.adaptation_report is not None:
                reports.append(prediction.adaptation_report)
            if prediction.quality is not None:
                signals.append(prediction.quality)
        if reports:
            write_json(adaptation_report_path(output_path), {
                "case": output_path.name, "fell_back": any(report["fell_back"] for report in reports),
                "members": reports,
            })
        return outputs, (NetworkSignals.mean(signals) if signals else None)

    def record_quality(
        self, output_path: Path, signals: NetworkSignals | None, statistics: LabelMapStatistics | None
    ) -> None:
        """Assess one exported case; its row waits for ``write_quality``."""
        if signals is None or statistics is None:
            return
        names = target_names(self.members[0].dataset, self.members[0].quality_targets)
        quality = assess_case(case_name(output_path), signals, statistics, target_names=names, model=self.quality,
                              flag_below=self.flag_below)
        self.quality_rows.setdefault(output_path.parent, []).append(quality_row(quality, names))

    def write_quality(self) -> None:
        """``quality.csv`` in every output folder (rows of earlier runs of other cases kept)."""
        for folder, rows in self.quality_rows.items():
            write_quality_table(folder / QUALITY_FILE, rows)


def case_name(output_path: str | os.PathLike[str]) -> str:
    """``CASE`` of the label map ``OUT/CASE.nii.gz`` (or ``.seg.nrrd``, ``.png``...)."""
    output_path = Path(output_path)
    ending = ".seg.nrrd" if output_path.name.endswith(".seg.nrrd") else file_ending(output_path) or output_path.suffix
    return output_path.name[: len(output_path.name) - len(ending)]


def adaptation_report_path(output_path: str | os.PathLike[str]) -> Path:
    """``OUT/CASE.adaptation.json`` next to the label map ``OUT/CASE.nii.gz``: what test-time adaptation did."""
    return Path(output_path).with_name(case_name(output_path) + ".adaptation.json")


def target_names(dataset: RawDataset, targets: Sequence[int]) -> dict[int, str]:
    """Label value -> name of every target the quality estimate scores (a region by its painted value)."""
    named = dict((value, name) for name, value in named_label_values(dataset))
    return {value: named.get(value, str(value)) for value in targets}


def _run_in_order(work: list[tuple[list[str], Path]], steps: _CaseSteps, bar: ProgressDisplay) -> list[Path]:
    """Every step of every case in this process, one case after the other."""
    written: list[Path] = []
    for image_paths, output_path in work:
        outputs, signals = steps.predict(preprocess_for_members(image_paths, steps.member_options), output_path)
        statistics = export_members(outputs, output_path=output_path, **steps.export_options)
        steps.record_quality(output_path, signals, statistics)
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
            outputs, signals = self.steps.predict(cases, output_path)
            del cases
            while len(self.queued_exports) >= self.lookahead:
                self._finish_oldest_export()
            self.queued_exports.append(
                (output_path, signals,
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
        output_path, signals, future = self.queued_exports.popleft()
        self.steps.record_quality(output_path, signals, future.result())
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
    quality: QualityModel | None = None,
) -> list[Path]:
    """Segment every ``(image_paths, output_path)`` item; returns the output paths written in this run.

    Args:
        members: one predictor, or several (configurations of one dataset) whose probabilities are averaged.
        postprocessing: a ``postprocessing.json`` decision applied to every label map.
        quality: the model's quality model (volume ranges, calibration, threshold); with the members'
            ``options.quality`` on, ``quality.csv`` is written next to the outputs either way.

    Raises the first error of any case (a ``UserError`` names the bad file); outputs already written stay valid,
    so a rerun with ``skip_existing`` continues where it stopped.
    """
    members = list(members)
    work = _pending_work(items, skip_existing=skip_existing)
    _check_channel_counts(work, members[0].dataset.num_channels)
    steps = _CaseSteps.for_members(members, save_probabilities=save_probabilities, postprocessing=postprocessing,
                                   quality=quality)
    bar = progress_display(total=len(work), description="predict", enabled=progress)
    try:
        if workers <= 0:
            return _run_in_order(work, steps, bar)
        return _run_overlapped(work, steps, bar, workers=workers)
    finally:
        steps.write_quality()  # the cases finished so far, also when a later case failed
