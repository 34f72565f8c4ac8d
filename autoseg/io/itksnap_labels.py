"""Write an ITK-SNAP label description file, so ITK-SNAP shows a prediction's classes by name (``itksnap -l FILE``).

ITK-SNAP reads label names only from this text file, not from image headers: one line per label,
``IDX R G B ALPHA VISIBLE MESH "NAME"`` (colours 0..255, alpha 0..1). The colours are those of the Slicer files
(``autoseg.io.slicer_segmentation.distinct_colours``), so a class looks the same in both viewers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from autoseg.io.slicer_segmentation import distinct_colours
from autoseg.utils.files import atomic_path


def write_itksnap_label_file(path: str | os.PathLike[str], segments: Sequence[tuple[str, int]]) -> None:
    """Write ``segments`` (``(name, label value)`` pairs) as an ITK-SNAP label description file, atomically."""
    lines = ["# ITK-SnAP Label Description File (written by autoseg)", "# IDX  -R-  -G-  -B-  -A-  VIS MSH  LABEL",
             '    0    0    0    0  0.0    0   0  "Clear Label"']
    for (name, value), colour in zip(segments, distinct_colours(len(segments)), strict=True):
        if '"' in name:
            raise ValueError(f"label name {name!r} contains a double quote, which ITK-SNAP cannot read")
        red, green, blue = (round(255 * channel) for channel in colour)
        lines.append(f'{int(value):5d}  {red:3d}  {green:3d}  {blue:3d}  1.0    1   1  "{name}"')
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
