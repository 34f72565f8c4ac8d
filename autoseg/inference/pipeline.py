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
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from autoseg.errors import UserError
from autoseg.inference.case_input import PreprocessedCase, preprocess_for_prediction
from autoseg.inference.export import export_members
from autoseg.records.postprocessing import PostprocessingDecision

if TYPE_CHECKING:
    from autoseg.inference.predictor import Predictor


def _limit_worker_threads() -> None:
    """Workers get one thread each: the network in the main process already uses the cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def preprocess_for_members(image_paths: list[str], member_options: list[dict]) -> list[PreprocessedCase]:
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


def run_prediction_pipeline(
    members: Sequence[Predictor],
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
    dataset = members[0].dataset
    work = _pending_work(items, skip_existing=skip_existing)
    for image_paths, _ in work:
        if len(image_paths) != dataset.num_channels:
            raise UserError(
                f"{image_paths[0]}: the model expects {dataset.num_channels} channel file(s) per case, "
                f"got {len(image_paths)}."
            )
    member_options = [
        {"configuration": member.configuration,
         "previous_configuration": member.previous_configuration}
        for member in members
    ]
    export_options = {"dataset": dataset, "save_probabilities": save_probabilities, "postprocessing": postprocessing}

    def predict(cases: list[PreprocessedCase]) -> list[tuple]:
        return [
            (member.predict_case(case), case.properties, member.configuration)
            for member, case in zip(members, cases, strict=True)
        ]

    bar = tqdm(total=len(work), desc="predict", unit="case", disable=not progress)
    written: list[Path] = []
    if workers <= 0:
        for image_paths, output_path in work:
            outputs = predict(preprocess_for_members(image_paths, member_options))
            export_members(outputs, output_path=output_path, **export_options)
            written.append(output_path)
            bar.update()
        bar.close()
        return written

    lookahead = workers  # cases preprocessed ahead, and predictions waiting for export
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and can deadlock
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_limit_worker_threads
    )
    try:
        queued_preprocessing: collections.deque = collections.deque()
        queued_exports: collections.deque = collections.deque()
        upcoming = iter(work)

        def fill_preprocessing_queue() -> None:
            while len(queued_preprocessing) < lookahead:
                item = next(upcoming, None)
                if item is None:
                    return
                image_paths, output_path = item
                queued_preprocessing.append(
                    (output_path, executor.submit(preprocess_for_members, image_paths, member_options))
                )

        def finish_oldest_export() -> None:
            output_path, future = queued_exports.popleft()
            future.result()
            written.append(output_path)
            bar.update()

        fill_preprocessing_queue()
        while queued_preprocessing:
            output_path, future = queued_preprocessing.popleft()
            cases = future.result()
            fill_preprocessing_queue()
            outputs = predict(cases)
            del cases
            while len(queued_exports) >= lookahead:
                finish_oldest_export()
            queued_exports.append(
                (output_path, executor.submit(export_members, outputs, output_path=output_path, **export_options))
            )
            del outputs
        while queued_exports:
            finish_oldest_export()
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    return written
