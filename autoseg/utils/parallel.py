"""Map a function over cases in worker processes, in order, with a progress display."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from autoseg.utils.progress import progress_display

Item = TypeVar("Item")
Result = TypeVar("Result")


def _limit_worker_threads() -> None:
    """One ITK and one torch thread per worker process: the pool already spreads the work over the cores."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def parallel_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    workers: int,
    description: str,
    progress: bool = True,
    minimum_items_for_pool: int = 2,
) -> Iterator[Result]:
    """Apply ``function`` to ``items`` in ``workers`` processes (in this process when ``workers <= 1`` or when
    there are fewer than ``minimum_items_for_pool`` items, where starting a pool costs more than it saves).

    Results come back in input order, with a progress display when ``progress`` is set (a tqdm bar on a terminal,
    a few lines in a log file: ``autoseg.utils.progress``). Worker processes are spawned rather than forked: forking
    a process in which ITK or torch already started threads can deadlock. As with any spawned pool, a script calling
    this must guard its top level with ``if __name__ == "__main__"``.
    """
    bar = progress_display(total=len(items), description=description, enabled=progress)
    try:
        if workers <= 1 or len(items) < max(2, minimum_items_for_pool):
            for item in items:
                yield function(item)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(items)), initializer=_limit_worker_threads) as pool:
            chunk_size = max(1, min(16, len(items) // (4 * workers)))
            for result in pool.imap(function, items, chunksize=chunk_size):
                yield result
                bar.update()
    finally:
        bar.close()


def _call_with_arguments(function_and_arguments: tuple[Callable, tuple]) -> object:
    function, arguments = function_and_arguments
    return function(*arguments)


def parallel_starmap(
    function: Callable[..., Result],
    arguments: Sequence[tuple],
    *,
    workers: int,
    description: str,
    progress: bool = True,
) -> list[Result]:
    """``[function(*a) for a in arguments]`` through ``parallel_map`` (``function`` must be importable)."""
    return list(
        parallel_map(
            _call_with_arguments, [(function, tuple(a)) for a in arguments], workers=workers,
            description=description, progress=progress,
        )
    )
