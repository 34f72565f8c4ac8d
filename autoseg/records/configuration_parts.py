"""The typed parts of a plan configuration: its ``network``, each channel's ``normalization`` and its ``resampling``.

Each part reads its JSON mapping with ``from_json`` and writes it back with ``to_json`` exactly as it was read: the
same keys in the same order, keys it does not know kept as they were, keys that were absent left out (readers see
the documented default instead). A hand-edited ``plans.json`` therefore survives a read and write unchanged.

Example:
    >>> network = Network.from_json({"architecture": "plain_unet", "features_per_stage": [32, 64],
    ...                              "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]],
    ...                              "blocks_per_stage_encoder": [2, 2], "convs_per_stage_decoder": [2]})
    >>> network.number_of_stages, network.strides[1]
    (2, (2, 2))
    >>> Resampling.from_json({}).image_order, Resampling.from_json({}).to_json()
    (3, {})
"""

from __future__ import annotations

import dataclasses

from autoseg.records.json_record import JsonRecord


@dataclasses.dataclass(frozen=True)
class Network(JsonRecord):
    """The U-Net a configuration trains: architecture name and its per-stage lists (see docs/design.md)."""

    architecture: str = "plain_unet"
    features_per_stage: tuple[int, ...] = ()
    kernel_sizes: tuple[tuple[int, ...], ...] = ()
    strides: tuple[tuple[int, ...], ...] = ()
    blocks_per_stage_encoder: tuple[int, ...] = ()
    convs_per_stage_decoder: tuple[int, ...] = ()

    @property
    def number_of_stages(self) -> int:
        return len(self.features_per_stage)


@dataclasses.dataclass(frozen=True)
class NormalizationScheme(JsonRecord):
    """One channel's intensity normalisation: ``zscore`` (``use_mask``), ``ct`` (clip and dataset statistics) or
    ``none``; the CT numbers are None for the other schemes."""

    scheme: str | None = None
    use_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclasses.dataclass(frozen=True)
class Resampling(JsonRecord):
    """Interpolation orders: images, labels, and the one axis resampled on its own when a case is anisotropic."""

    anisotropic: bool = False
    image_order: int = 3
    label_order: int = 1
    coarse_axis_order: int = 0
