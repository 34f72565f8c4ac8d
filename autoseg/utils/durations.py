"""Durations as users write and read them: ``--time-budget 20m`` in, ``12 min`` and ``14:05`` out.

Example:
    >>> parse_time_budget("1.5h"), describe_duration(5400)
    (5400.0, '1.5 h')
"""

from __future__ import annotations

import datetime
import re

from autoseg.errors import UserError

TIME_BUDGET_PATTERN = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
SECONDS_PER_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_time_budget(text: str) -> float:
    """Seconds in a budget such as ``"90s"``, ``"20m"``, ``"2h"`` or ``"1.5h"`` (a bare number means minutes)."""
    match = TIME_BUDGET_PATTERN.match(str(text))
    if not match:
        raise UserError(f"time budget {text!r} is not understood; write it like 90s, 20m or 2h.")
    unit = (match.group("unit") or "m").lower()
    seconds = float(match.group("value")) * SECONDS_PER_UNIT[unit]
    if seconds <= 0:
        raise UserError(f"time budget {text!r} must be positive.")
    return seconds


def describe_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``58 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def clock_time_in(seconds: float) -> str:
    """The wall-clock time ``seconds`` from now, as HH:MM."""
    return (datetime.datetime.now() + datetime.timedelta(seconds=seconds)).strftime("%H:%M")
