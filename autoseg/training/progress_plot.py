"""``progress.png``: losses, pseudo-Dice, learning rate and epoch time per epoch, from the training log.

Four panels share the epoch axis; the top panel also shows wall-clock minutes (the sum of the epoch times), so a
plateau can be read as "no gain in the last 40 minutes" as well as "no gain in the last 100 epochs".

Example:
    >>> records = [{"epoch": 0, "train_loss": 0.9, "val_loss": 0.8, "pseudo_dice": {"tumour": 0.4},
    ...             "ema_pseudo_dice": 0.4, "learning_rate": 0.01, "epoch_seconds": 30.0}]
    >>> progress_figure(records).axes[0].get_xlabel()
    ''
    >>> progress_figure(records).axes[3].get_xlabel()
    'epoch'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from autoseg.report.figures import SERIES_COLOURS, as_plot_values, has_values, new_figure, save_figure, show_no_data

# Markers make single points visible (a log of one epoch would otherwise draw nothing); on long logs they are clutter.
MARKER_EPOCH_LIMIT = 30


def class_names_in_log(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every class with a pseudo-Dice in the log, in the order the log lists them (the dataset's label order)."""
    return list(dict.fromkeys(name for record in records for name in (record.get("pseudo_dice") or {})))


def mean_pseudo_dice(record: dict[str, Any]) -> float | None:
    """The record's mean pseudo-Dice over classes (logged as ``mean_pseudo_dice``; computed for older logs)."""
    if record.get("mean_pseudo_dice") is not None:
        return float(record["mean_pseudo_dice"])
    values = [value for value in (record.get("pseudo_dice") or {}).values() if value is not None]
    return float(np.mean(values)) if values else None


def epoch_minutes_functions(
    epochs: np.ndarray, epoch_seconds: Sequence[float | None]
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:
    """Maps from the epoch axis to wall-clock minutes at the end of that epoch, and back; linear between
    epochs and extrapolated beyond them; None when the log has no epoch times.

    A point at ``epoch = first - 1`` with 0 minutes stands for the start of training, so a single epoch still
    defines a slope. Missing epoch times count as 0 s; a tiny increase per epoch keeps the map invertible.
    """
    seconds = as_plot_values(epoch_seconds)
    if not np.isfinite(seconds).any():
        return None
    seconds = np.nan_to_num(seconds, nan=0.0).clip(min=0.0)
    positions = np.concatenate([[epochs[0] - 1.0], epochs])
    minutes = np.concatenate([[0.0], np.cumsum(seconds) / 60.0]) + 1e-9 * np.arange(len(epochs) + 1)

    def piecewise_linear(points: np.ndarray, values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def apply(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.float64)
            inside = np.interp(x, points, values)
            left_slope = (values[1] - values[0]) / (points[1] - points[0])
            right_slope = (values[-1] - values[-2]) / (points[-1] - points[-2])
            below = values[0] + (x - points[0]) * left_slope
            above = values[-1] + (x - points[-1]) * right_slope
            return np.where(x < points[0], below, np.where(x > points[-1], above, inside))

        return apply

    return piecewise_linear(positions, minutes), piecewise_linear(minutes, positions)


def _plot(axis: Axes, epochs: np.ndarray, values: Sequence[float | None], label: str, **style: Any) -> bool:
    """Draw one series if it has any value; returns whether it was drawn."""
    if not has_values(values):
        return False
    if len(epochs) <= MARKER_EPOCH_LIMIT:
        style.setdefault("marker", "o")
        style.setdefault("markersize", 3)
    axis.plot(epochs, as_plot_values(values), label=label, **style)
    return True


def _finish_panel(axis: Axes, drawn: bool, *, title: str, ylabel: str) -> None:
    axis.set_title(title, loc="left", fontsize=11)
    axis.set_ylabel(ylabel)
    axis.grid(True, alpha=0.3)
    if drawn:
        axis.legend(loc="best", fontsize=8, framealpha=0.8)
    else:
        show_no_data(axis, "not logged")


def progress_figure(records: Sequence[dict[str, Any]]) -> Figure:
    """The ``progress.png`` figure: (1) train and validation loss, (2) pseudo-Dice per class with its mean and the
    moving average that picks the best checkpoint, (3) learning rate, (4) epoch time and the part of it spent
    waiting for augmented batches. None values leave gaps; a panel whose values were never logged says so."""
    records = list(records)
    figure = new_figure(width_inches=9, height_inches=11, constrained_layout=False)
    figure.subplots_adjust(left=0.09, right=0.98, top=0.925, bottom=0.05, hspace=0.3)
    axes = figure.subplots(4, 1, sharex=True)
    loss_axis, dice_axis, rate_axis, time_axis = axes
    if not records:
        for axis in axes:
            show_no_data(axis, "no epoch logged yet")
        time_axis.set_xlabel("epoch")
        return figure
    epochs = np.array([float(record.get("epoch", index)) for index, record in enumerate(records)])

    def column(key: str) -> list[float | None]:
        return [record.get(key) for record in records]

    drawn = _plot(loss_axis, epochs, column("train_loss"), "training", color=SERIES_COLOURS[0])
    drawn |= _plot(loss_axis, epochs, column("val_loss"), "validation", color=SERIES_COLOURS[1])
    _finish_panel(loss_axis, drawn, title="Loss", ylabel="loss")

    drawn = False
    for index, name in enumerate(class_names_in_log(records)):
        values = [(record.get("pseudo_dice") or {}).get(name) for record in records]
        drawn |= _plot(dice_axis, epochs, values, str(name), color=SERIES_COLOURS[(index + 2) % len(SERIES_COLOURS)],
                       linewidth=1.0, alpha=0.8)
    drawn |= _plot(dice_axis, epochs, [mean_pseudo_dice(record) for record in records], "mean", color="#444444",
                   linestyle="--", linewidth=1.2)
    drawn |= _plot(dice_axis, epochs, column("ema_pseudo_dice"), "moving average of mean (selects best)",
                   color="#000000", linewidth=2.2)
    dice_axis.set_ylim(0.0, 1.0)
    _finish_panel(dice_axis, drawn, title="Pseudo-Dice on validation patches", ylabel="Dice")

    drawn = _plot(rate_axis, epochs, column("learning_rate"), "learning rate", color=SERIES_COLOURS[2])
    rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _finish_panel(rate_axis, drawn, title="Learning rate", ylabel="learning rate")

    drawn = _plot(time_axis, epochs, column("epoch_seconds"), "whole epoch", color=SERIES_COLOURS[0])
    drawn |= _plot(time_axis, epochs, column("train_seconds"), "training steps", color=SERIES_COLOURS[5],
                   linewidth=1.0)
    waits = column("data_wait_seconds")
    if _plot(time_axis, epochs, waits, "waiting for data", color=SERIES_COLOURS[1], linewidth=1.0):
        # Shaded down to zero: the part of the epoch the network sat idle.
        time_axis.fill_between(epochs, 0.0, as_plot_values(waits), color=SERIES_COLOURS[1], alpha=0.3)
        drawn = True
    time_axis.set_ylim(bottom=0.0)
    _finish_panel(time_axis, drawn, title="Epoch time", ylabel="seconds")
    time_axis.set_xlabel("epoch")
    # Whole epochs only, and half an epoch of room at each end so that a log of one epoch gets a readable axis.
    padding = max(0.5, 0.02 * float(epochs[-1] - epochs[0]))
    time_axis.set_xlim(float(epochs.min()) - padding, float(epochs.max()) + padding)
    time_axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))

    functions = epoch_minutes_functions(epochs, column("epoch_seconds"))
    if functions is not None:
        minutes_axis = loss_axis.secondary_xaxis("top", functions=functions)
        minutes_axis.set_xlabel("wall-clock minutes (sum of epoch times)")
    return figure


def draw_progress(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    """Write ``progress.png`` atomically (it is redrawn after every epoch, and may be open in a viewer)."""
    save_figure(progress_figure(records), path)
