"""The ``plans.json`` record: reading it, and resolving a configuration that ``inherits_from`` another."""

from __future__ import annotations

import os
from pathlib import Path

from autoseg.errors import UserError
from autoseg.utils.files import read_json

PLANS_FILE_NAME = "plans.json"


def load_plans(path: str | os.PathLike[str]) -> dict:
    """Read a ``plans.json`` (or the ``plans.json`` inside a dataset's working folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / PLANS_FILE_NAME
    if not path.is_file():
        raise UserError(f"{path}: no plans found; run `autoseg plan DATASET` first.")
    try:
        plans = read_json(path)
    except ValueError:
        raise UserError(f"{path}: is not valid JSON; fix it or run `autoseg plan DATASET` again.") from None
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise UserError(f"{path}: has no 'configurations' mapping; run `autoseg plan DATASET` again.")
    return plans


def resolve_configuration(plans: dict, name: str) -> dict:
    """The full configuration ``name``: its parent chain (``inherits_from``) merged, child keys winning.

    The merge is per top-level key: a child that changes one field of ``network`` states the whole ``network``.
    The result has no ``inherits_from`` key.

    Raises:
        UserError: unknown configuration, unknown parent, or an inheritance cycle.
    """
    configurations = plans["configurations"]
    if name not in configurations:
        raise UserError(
            f"configuration {name!r} is not in the plans; planned: {', '.join(configurations)}."
        )
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise UserError(f"plans: configuration {name!r} inherits from itself ({' -> '.join([*chain, current])}).")
        if current not in configurations:
            raise UserError(f"plans: configuration {chain[-1]!r} inherits from unknown {current!r}.")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    resolved: dict = {}
    for entry in reversed(chain):
        resolved.update({key: value for key, value in configurations[entry].items() if key != "inherits_from"})
    return resolved


def compact_configurations(full: dict[str, dict], parents: dict[str, str]) -> dict[str, dict]:
    """Inverse of ``resolve_configuration``: each child keeps only the keys that differ from its parent."""
    compact: dict[str, dict] = {}
    for name, configuration in full.items():
        parent = parents.get(name)
        if parent is None:
            compact[name] = configuration
            continue
        differing = {key: value for key, value in configuration.items() if full[parent].get(key) != value}
        compact[name] = {"inherits_from": parent, **differing}
    return compact
