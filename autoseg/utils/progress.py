"""Progress displays: a tqdm bar on a terminal, a few plain lines in a log file (``AUTOSEG_PROGRESS`` chooses).

A run whose output goes to a file (SLURM, nohup, CI, ``> log``) would otherwise fill it with thousands of
carriage-return bar updates. ``progress_display(...)`` looks at the stream it writes to: on a terminal (or in a Jupyter
kernel) it returns a tqdm bar; otherwise a ``LineProgress`` that writes one line per ``LINE_INTERVAL_SECONDS`` at
most, plus a final line when the work is complete. Set ``AUTOSEG_PROGRESS`` to ``bars``, ``lines`` or ``none`` to
choose instead of the stream (``none`` shows nothing).

    >>> with progress_display(total=2, description="preprocess") as bar:
    ...     bar.update(2)
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from autoseg.errors import UserError

PROGRESS_VARIABLE = "AUTOSEG_PROGRESS"
PROGRESS_MODES = ("bars", "lines", "none")
LINE_INTERVAL_SECONDS = 30.0


class ProgressDisplay(Protocol):
    """What the call sites use of a tqdm bar; ``LineProgress`` offers the same."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None: ...
    def set_description(self, desc: str | None = None, refresh: bool = True) -> None: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __enter__(self) -> ProgressDisplay: ...
    def __exit__(self, *exception: object) -> Any: ...


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``3 min 05 s`` or ``2 h 07 min``: a duration as a person reads it in a log."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_mode(stream: IO[str]) -> str:
    """``bars``, ``lines`` or ``none``: ``AUTOSEG_PROGRESS`` when set, else bars on a terminal and lines elsewhere."""
    forced = os.environ.get(PROGRESS_VARIABLE, "").strip().lower()
    if forced:
        if forced not in PROGRESS_MODES:
            raise UserError(f"{PROGRESS_VARIABLE}={forced!r} is not understood; set it to bars, lines or none.")
        return forced
    isatty = getattr(stream, "isatty", None)
    # A notebook's output is no terminal, yet it redraws tqdm's carriage returns in place as a terminal does.
    on_terminal = (callable(isatty) and isatty()) or "ipykernel" in sys.modules
    return "bars" if on_terminal else "lines"


class LineProgress:
    """A progress display for log files: ``description: 12/30 cases (40 %), 1 min 02 s, ETA 1 min 33 s`` at most
    once per ``interval`` seconds, and ``description: 30 cases in 2 min 35 s`` once the work is complete (nothing
    more when it stops early, e.g. on an error). ``interval=None`` writes nothing at all."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        description: str = "",
        unit: str = "case",
        initial: int = 0,
        interval: float | None = LINE_INTERVAL_SECONDS,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.description, self.unit = iterable, total, description, unit
        self.n = self.initial = initial
        self.interval, self.stream, self.clock = interval, stream, clock
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = clock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        unfinished = self.total is None or self.n < self.total  # open-ended work reports as it goes too
        if self.interval is not None and now - self.last_line >= self.interval and unfinished:
            self.last_line = now
            self._write(self._progress_line(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.description = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.interval is not None and self._complete():
            elapsed = format_duration(self.clock() - self.started)
            self._write(f"{self._label()}{self.n} {self._units(self.n)} in {elapsed}{self._postfix()}")

    def __iter__(self) -> Iterator[Any]:
        with self:
            for item in self.iterable or ():
                yield item
                self.update()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exception_type: type[BaseException] | None, *_: object) -> None:
        if exception_type is not None:
            self.closed = True  # stopped early: the error says what happened, a final line would not
        self.close()

    def _complete(self) -> bool:
        return self.total is None or self.n >= self.total

    def _progress_line(self, now: float) -> str:
        elapsed = now - self.started
        if not self.total:
            return f"{self._label()}{self.n} {self._units(self.n)}, {format_duration(elapsed)}{self._postfix()}"
        percent = math.floor(100 * self.n / self.total)
        done_here = self.n - self.initial
        eta = elapsed * (self.total - self.n) / done_here if done_here > 0 else None
        shown_eta = "" if eta is None else f", ETA {format_duration(eta)}"
        return (f"{self._label()}{self.n}/{self.total} {self._units(self.total)} ({percent} %), "
                f"{format_duration(elapsed)}{shown_eta}{self._postfix()}")

    def _label(self) -> str:
        return f"{self.description}: " if self.description else ""

    def _units(self, count: int) -> str:
        return self.unit if count == 1 else f"{self.unit}s"

    def _postfix(self) -> str:
        return "".join(f", {key} {value}" for key, value in self.postfix.items())

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)


def progress_display(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    description: str = "",
    unit: str = "case",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    lines_in_logs: bool = True,
    stream: IO[str] | None = None,
) -> ProgressDisplay:
    """A tqdm bar over ``iterable`` (or ``total`` units counted with ``update``) on a terminal, a ``LineProgress``
    in a log file, nothing when ``enabled`` is false (or ``AUTOSEG_PROGRESS=none``).

    Args:
        leave: keep the finished bar on the terminal (tqdm's ``leave``).
        lines_in_logs: False for inner displays (an epoch's iterations, a case's sliding-window batches) that
            write nothing to a log file, where their outer display or a summary line tells the story.
        stream: where it writes (default: standard error, as tqdm).
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    mode = progress_mode(stream) if enabled else "none"
    if mode == "bars":
        return tqdm(iterable, total=total, desc=description, unit=unit, initial=initial, leave=leave,
                    dynamic_ncols=True, file=stream)
    interval = LINE_INTERVAL_SECONDS if mode == "lines" and lines_in_logs else None
    return LineProgress(iterable, total=total, description=description, unit=unit, initial=initial,
                        interval=interval, stream=stream)


__all__ = ["LINE_INTERVAL_SECONDS", "PROGRESS_VARIABLE", "LineProgress", "ProgressDisplay", "format_duration",
           "progress_display", "progress_mode"]
