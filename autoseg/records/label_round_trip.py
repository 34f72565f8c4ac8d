"""``label_round_trip.json``: the planner's label round trip, kept so that a resumed or repeated plan skips it.

The round trip (``autoseg.fingerprint.label_round_trip``) reads and resamples label maps, which costs minutes on CT
volumes. Its result depends only on the training labels (the fingerprint's ``inputs_signature``), the
full-resolution spacing and the coarsening factors, so the file stores those as its key next to the result (per
factor, per class, the Dice) and is used only when the key matches. Numbers are stored as JSON floats, which read
back bit for bit, so a plan from a cached round trip is byte-identical to one from a fresh round trip.

Example:
    >>> key = round_trip_key("abc", [1.0, 0.5], [2.0])
    >>> path = Path("label_round_trip.json")
    >>> write_round_trip(path, key, {2.0: {1: 0.9, 2: 0.75}})
    >>> cached_round_trip(path, key), cached_round_trip(path, round_trip_key("abc", [1.0, 0.5], [3.0]))
    ({2.0: {1: 0.9, 2: 0.75}}, None)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoseg.utils.files import read_json, write_json

# Bump when the round trip's method changes, so that results of the old method are recomputed.
ROUND_TRIP_VERSION = 1

PerClassDice = dict[float, dict[int, float]]


def round_trip_key(inputs_signature: str, spacing: Sequence[float], factors: Sequence[float]) -> dict[str, Any]:
    """What a stored round trip must match to be reused."""
    return {
        "round_trip_version": ROUND_TRIP_VERSION,
        "inputs_signature": inputs_signature,
        "spacing": [float(value) for value in spacing],
        "factors": [float(factor) for factor in factors],
    }


def write_round_trip(path: str | os.PathLike[str], key: dict[str, Any], dice: PerClassDice) -> None:
    """Store ``dice`` under ``key`` (atomically: an interrupted write leaves the old file or none)."""
    stored = {repr(float(factor)): {str(value): score for value, score in classes.items()}
              for factor, classes in dice.items()}
    write_json(path, {**key, "dice": stored})


def cached_round_trip(path: str | os.PathLike[str], key: dict[str, Any]) -> PerClassDice | None:
    """The stored round trip when its key equals ``key``; None when absent, unreadable or made for other inputs."""
    if not Path(path).is_file():
        return None
    try:
        stored = read_json(path)
    except ValueError:
        return None
    if not isinstance(stored, dict) or {name: stored.get(name) for name in key} != key:
        return None
    dice = stored.get("dice")
    if not isinstance(dice, dict):
        return None
    return {float(factor): {int(value): float(score) for value, score in classes.items()}
            for factor, classes in dice.items()}
