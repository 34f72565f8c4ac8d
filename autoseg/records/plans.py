"""``plans.json`` as typed records: ``Plans`` holds every ``Configuration`` resolved, each carrying its axis order.

On disk a configuration may name a parent with ``inherits_from`` and state only what differs; ``Plans.to_json``
writes that compact form again, so a file read and written back is unchanged.

Example:
    >>> plans = Plans.from_json(plans_json)
    >>> configuration = plans.configuration("3d_fullres")
    >>> configuration.patch_size, configuration.transpose_forward
    ((40, 56, 40), (0, 1, 2))
    >>> Plans.from_json(plans.to_json()) == plans
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoseg.errors import UserError
from autoseg.records.compute_plan import ComputePlan
from autoseg.records.configuration_parts import Network, NormalizationScheme, Resampling
from autoseg.records.work_folder import PLANS_FILE
from autoseg.utils.files import read_json

# Keys a configuration may hold in plans.json besides ``inherits_from``; anything else is a user error.
_FIELDS = (
    "dimension", "spacing", "median_shape", "patch_size", "batch_size", "network", "normalization", "resampling",
    "batch_dice", "estimated_memory_gb", "previous_stage", "mirror_axes",
)


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One resolved configuration: grid, network, patch and batch, plus the plans' axis order it is trained in.

    ``spacing``, ``median_shape`` and ``patch_size`` are in the transposed (network) axis order.
    """

    name: str
    dimension: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    network: Network
    normalization: tuple[NormalizationScheme, ...]
    resampling: Resampling
    batch_dice: bool = False
    transpose_forward: tuple[int, ...] = (0, 1, 2)
    transpose_backward: tuple[int, ...] = (0, 1, 2)
    median_shape: tuple[float, ...] | None = None
    estimated_memory_gb: float | None = None
    previous_stage: str | None = None
    mirror_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        """Parts given as JSON mappings (tests, cost probes) become their typed records."""
        if isinstance(self.network, Mapping):
            object.__setattr__(self, "network", Network.from_json(self.network))
        if any(isinstance(entry, Mapping) for entry in self.normalization):
            schemes = tuple(
                NormalizationScheme.from_json(entry) if isinstance(entry, Mapping) else entry
                for entry in self.normalization
            )
            object.__setattr__(self, "normalization", schemes)
        if isinstance(self.resampling, Mapping):
            object.__setattr__(self, "resampling", Resampling.from_json(self.resampling))

    @classmethod
    def from_json(
        cls, name: str, data: dict[str, Any], *, transpose_forward: Any = (0, 1, 2), transpose_backward: Any = None
    ) -> Configuration:
        """A configuration from its resolved JSON mapping; raises ``UserError`` naming a missing or unknown key."""
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise UserError(f"plans: configuration {name!r} has unknown keys {unknown}; run `autoseg plan` again.")
        missing = [key for key in ("dimension", "spacing", "patch_size", "batch_size", "network") if key not in data]
        if missing:
            raise UserError(f"plans: configuration {name!r} lacks {missing}; run `autoseg plan` again.")
        forward = tuple(int(axis) for axis in transpose_forward)
        backward = tuple(int(axis) for axis in transpose_backward) if transpose_backward is not None else None
        optional = {key: data.get(key) for key in ("estimated_memory_gb", "previous_stage")}
        return cls(
            name=name, dimension=int(data["dimension"]), spacing=_floats(data["spacing"]),
            patch_size=tuple(int(size) for size in data["patch_size"]), batch_size=int(data["batch_size"]),
            network=Network.from_json(data["network"]),
            normalization=tuple(NormalizationScheme.from_json(entry) for entry in data.get("normalization", ())),
            resampling=Resampling.from_json(data.get("resampling", {})), batch_dice=bool(data.get("batch_dice", False)),
            transpose_forward=forward, transpose_backward=backward or _inverse(forward),
            median_shape=_floats(data["median_shape"]) if data.get("median_shape") is not None else None,
            mirror_axes=tuple(int(a) for a in data["mirror_axes"]) if data.get("mirror_axes") is not None else None,
            **optional,
        )

    def to_json(self) -> dict[str, Any]:
        """The configuration's own keys as ``plans.json`` and checkpoints store them (no name, no axis order)."""
        data: dict[str, Any] = {
            "dimension": self.dimension, "spacing": list(self.spacing),
            "median_shape": list(self.median_shape) if self.median_shape is not None else None,
            "patch_size": list(self.patch_size), "batch_size": self.batch_size,
            "network": self.network.to_json(), "normalization": [entry.to_json() for entry in self.normalization],
            "resampling": self.resampling.to_json(), "batch_dice": self.batch_dice,
            "estimated_memory_gb": self.estimated_memory_gb, "previous_stage": self.previous_stage,
            "mirror_axes": list(self.mirror_axes) if self.mirror_axes is not None else None,
        }
        return {key: value for key, value in data.items() if value is not None}

    def replace(self, **changes: Any) -> Configuration:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Plans:
    """The whole ``plans.json``: top-level facts, and each configuration resolved (parents merged in)."""

    configurations: dict[str, Configuration]
    parents: dict[str, str]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    header: dict[str, Any]  # every other top-level key (dataset name, preset, budget, versions), kept as written

    @classmethod
    def from_json(cls, data: Any, *, source: str = "plans") -> Plans:
        if not isinstance(data, dict) or not isinstance(data.get("configurations"), dict):
            raise UserError(f"{source}: has no 'configurations' mapping; run `autoseg plan DATASET` again.")
        forward = tuple(int(axis) for axis in data.get("transpose_forward", (0, 1, 2)))
        backward = tuple(int(a) for a in data["transpose_backward"]) if "transpose_backward" in data else None
        compact = data["configurations"]
        parents = {name: str(entry["inherits_from"]) for name, entry in compact.items() if entry.get("inherits_from")}
        configurations = {
            name: Configuration.from_json(
                name, _resolve(compact, name), transpose_forward=forward, transpose_backward=backward
            )
            for name in compact
        }
        header = {key: value for key, value in data.items() if key != "configurations"}
        return cls(configurations, parents, forward, backward or _inverse(forward), header)

    def to_json(self) -> dict[str, Any]:
        full = {name: configuration.to_json() for name, configuration in self.configurations.items()}
        return {**self.header, "configurations": compact_configurations(full, self.parents)}

    @property
    def names(self) -> list[str]:
        return list(self.configurations)

    @property
    def compute(self) -> ComputePlan | None:
        """The time budget's decision the plans were fitted to (``autoseg.planning.layout``), None without one."""
        data = self.header.get("compute")
        return ComputePlan.from_json(data) if data else None

    def training_recipe(self, name: str) -> dict[str, Any]:
        """The training settings the time budget chose for configuration ``name`` (empty: the reference recipe)."""
        compute = self.compute
        return compute.recipe_for(name) if compute is not None else {}

    def get(self, key: str, default: Any = None) -> Any:
        """A top-level fact such as ``dataset_name``, ``preset`` or ``fingerprint_signature``."""
        return self.header.get(key, default)

    def configuration(self, name: str) -> Configuration:
        if name not in self.configurations:
            raise UserError(f"configuration {name!r} is not in the plans; planned: {', '.join(self.configurations)}.")
        return self.configurations[name]

    def data_configuration(self, name: str) -> str:
        """The configuration whose preprocessed data ``name`` trains on: a cascade stage shares its parent's."""
        configuration = self.configuration(name)
        if configuration.previous_stage and name in self.parents:
            return self.parents[name]
        return name

    def data_configurations(self) -> list[str]:
        """Configurations that need their own preprocessed data."""
        return [name for name in self.configurations if self.data_configuration(name) == name]


def load_plans(path: str | os.PathLike[str]) -> Plans:
    """Read a ``plans.json`` (or the one inside a working folder); one-sentence ``UserError`` if unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / PLANS_FILE
    if not path.is_file():
        raise UserError(f"{path}: no plans found; run `autoseg plan DATASET` first.")
    try:
        data = read_json(path)
    except ValueError:
        raise UserError(f"{path}: is not valid JSON; fix it or run `autoseg plan DATASET` again.") from None
    return Plans.from_json(data, source=str(path))


def _resolve(configurations: dict[str, dict], name: str) -> dict[str, Any]:
    """Configuration ``name`` with its parent chain (``inherits_from``) merged, child keys winning."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise UserError(f"plans: configuration {name!r} inherits from itself ({' -> '.join([*chain, current])}).")
        if current not in configurations:
            raise UserError(f"plans: configuration {chain[-1]!r} inherits from unknown {current!r}.")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    resolved: dict[str, Any] = {}
    for entry in reversed(chain):
        resolved.update({key: value for key, value in configurations[entry].items() if key != "inherits_from"})
    return resolved


def compact_configurations(full: dict[str, dict], parents: dict[str, str]) -> dict[str, dict]:
    """Each child keeps only the keys that differ from its parent, after ``inherits_from``."""
    compact: dict[str, dict] = {}
    for name, configuration in full.items():
        parent = parents.get(name)
        if parent is None:
            compact[name] = configuration
            continue
        differing = {key: value for key, value in configuration.items() if full[parent].get(key) != value}
        compact[name] = {"inherits_from": parent, **differing}
    return compact


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(value) for value in values)


def _inverse(forward: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(forward)), key=lambda axis: forward[axis]))
