"""One part of a list split for a cluster array job (``--part-id``/``--num-parts``): every ``num_parts``-th item.

Example:
    >>> shard(["a", "b", "c", "d", "e"], part_id=1, num_parts=2)
    ['b', 'd']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from autoseg.errors import UserError

Item = TypeVar("Item")


def shard(items: Sequence[Item], *, part_id: int, num_parts: int) -> list[Item]:
    """Every ``num_parts``-th item starting at ``part_id``: parts are disjoint and together cover every item."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UserError(f"--part-id must be in 0..{num_parts - 1} and --num-parts >= 1 (got {part_id}, {num_parts}).")
    return list(items)[part_id::num_parts]
