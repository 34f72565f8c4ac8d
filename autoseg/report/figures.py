"""Figure helpers shared by ``progress.png`` and the HTML report: matplotlib on the Agg canvas, PNG bytes out.

Figures are built as ``matplotlib.figure.Figure`` objects attached to their own ``FigureCanvasAgg``, never through
``pyplot``: no display is needed, no global figure registry grows during a long training run, and drawing is safe
in threads and worker processes.

Example:
    >>> figure = new_figure(width_inches=6, height_inches=3)
    >>> axis = figure.add_subplot()
    >>> _ = axis.plot(as_plot_values([0.9, None, 0.5]))
    >>> figure_png(figure).startswith(b"\\x89PNG")
    True
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autoseg.utils.files import atomic_path

DOTS_PER_INCH = 100
# Okabe-Ito colours (as in the overlays): distinguishable for colour-blind readers and in greyscale print.
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def new_figure(*, width_inches: float, height_inches: float, constrained_layout: bool = True) -> Figure:
    """An empty figure on its own Agg canvas; its PNG is ``width_inches * 100`` by ``height_inches * 100`` pixels.

    The constrained layout keeps axis labels, titles and legends inside the picture without manual margins; it
    costs most of the drawing time, so a figure redrawn often (``progress.png``, every epoch) sets fixed margins
    instead (``constrained_layout=False`` and ``figure.subplots_adjust``).
    """
    figure = Figure(figsize=(width_inches, height_inches), dpi=DOTS_PER_INCH,
                    layout="constrained" if constrained_layout else None)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG file content (for embedding as base64, or writing with :func:`save_figure`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DOTS_PER_INCH, facecolor="white")
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the figure as a PNG atomically: a reader (or the report) never sees half a picture."""
    data = figure_png(figure)
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def as_plot_values(values: Sequence[float | None]) -> np.ndarray:
    """Floats with None as NaN, which matplotlib leaves as a gap in a line."""
    return np.array([math.nan if value is None else float(value) for value in values], dtype=np.float64)


def has_values(values: Sequence[float | None]) -> bool:
    """Whether a series has at least one finite value worth drawing (an all-None series would be an empty legend
    entry)."""
    return bool(np.isfinite(as_plot_values(values)).any())


def show_no_data(axis: Axes, message: str) -> None:
    """Say in the panel itself why it is empty, instead of leaving a blank frame that looks like a bug."""
    axis.text(0.5, 0.5, message, transform=axis.transAxes, ha="center", va="center", color="#666666")


def grouped_bar_chart(
    axis: Axes,
    group_names: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    value_format: str = "{:.3f}",
) -> None:
    """One group of bars per ``group_names`` entry, one bar per series (same colour across groups), each bar labelled
    with its value; a missing value (None) leaves a gap labelled "n/a" so that it is not mistaken for zero."""
    group_count, series_count = len(group_names), max(1, len(series))
    width = 0.8 / series_count
    positions = np.arange(group_count, dtype=np.float64)
    for index, (name, values) in enumerate(series.items()):
        heights = as_plot_values(values)
        offsets = positions - 0.4 + width * (index + 0.5)
        bars = axis.bar(offsets, np.nan_to_num(heights, nan=0.0), width * 0.95, label=name,
                        color=SERIES_COLOURS[index % len(SERIES_COLOURS)])
        labels = ["n/a" if math.isnan(value) else value_format.format(value) for value in heights]
        axis.bar_label(bars, labels=labels, padding=2, fontsize=8, rotation=90 if series_count > 3 else 0)
    axis.set_xticks(positions, list(group_names))
