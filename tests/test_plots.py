"""``progress.png``: labelled panels drawn from the training log, readable for one epoch or many, with gaps for None."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as matplotlib_image
from matplotlib.axes import Axes

from autoseg.report.figures import as_plot_values, figure_png, new_figure
from autoseg.training.progress_plot import draw_progress, epoch_minutes_functions, progress_figure
from autoseg.training.training_log import update_moving_average

CLASS_NAMES = ["posterior", "anterior"]  # deliberately not alphabetical: the plot keeps the log's order


def training_log(epochs: int) -> list[dict]:
    """Records as the training loop writes them, with the gaps real logs have (no validation in epoch 2)."""
    records, moving_average = [], None
    for epoch in range(epochs):
        dice = {name: min(1.0, 0.1 * epoch + 0.05 * index) for index, name in enumerate(CLASS_NAMES)}
        mean = float(np.mean(list(dice.values())))
        moving_average = update_moving_average(moving_average, mean)
        records.append({
            "epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": None if epoch == 2 else 1.2 / (epoch + 1),
            "pseudo_dice": dice, "mean_pseudo_dice": mean, "ema_pseudo_dice": moving_average,
            "learning_rate": 0.01 * (1 - epoch / epochs) ** 0.9, "epoch_seconds": 30.0 + epoch,
            "train_seconds": 25.0, "data_wait_seconds": 2.0, "iterations": 250, "elapsed_seconds": 31.0 * (epoch + 1),
        })
    return records


def legend_texts(axis: Axes) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_progress_figure_has_labelled_panels_for_loss_dice_learning_rate_and_time() -> None:
    records = training_log(12)
    figure = progress_figure(records)
    loss, dice, rate, seconds = figure.axes[:4]
    assert [axis.get_ylabel() for axis in (loss, dice, rate, seconds)] == ["loss", "Dice", "learning rate", "seconds"]
    assert [axis.get_title(loc="left") for axis in (loss, dice, rate, seconds)] == [
        "Loss", "Pseudo-Dice on validation patches", "Learning rate", "Epoch time"]
    assert seconds.get_xlabel() == "epoch"
    assert legend_texts(loss) == ["training", "validation"]
    assert legend_texts(dice) == [*CLASS_NAMES, "mean", "moving average of mean (selects best)"]
    assert legend_texts(seconds) == ["whole epoch", "training steps", "waiting for data"]
    # The lines carry the logged values; the missing validation loss is a gap, not a zero.
    validation = loss.get_lines()[1].get_ydata()
    assert np.isnan(validation[2]) and validation[3] == pytest.approx(1.2 / 4)
    moving_average = dice.get_lines()[-1].get_ydata()
    assert moving_average == pytest.approx([record["ema_pseudo_dice"] for record in records])
    # The top axis of the first panel reads in wall-clock minutes.
    (minutes_axis,) = loss.child_axes
    assert "minutes" in minutes_axis.get_xlabel()


def test_wall_clock_minutes_are_the_running_sum_of_epoch_times() -> None:
    records = training_log(5)
    epochs = np.arange(5, dtype=float)
    to_minutes, to_epochs = epoch_minutes_functions(epochs, [record["epoch_seconds"] for record in records])
    assert to_minutes(np.array([4.0])) == pytest.approx([sum(30.0 + e for e in range(5)) / 60])
    assert to_minutes(np.array([-1.0])) == pytest.approx([0.0], abs=1e-6)  # training starts before epoch 0 ends
    positions = np.array([-3.0, 0.5, 2.25, 7.0])  # outside the log too: the axis margins
    assert to_epochs(to_minutes(positions)) == pytest.approx(positions)
    assert epoch_minutes_functions(epochs, [None] * 5) is None  # no times logged: no minutes axis


def test_draw_progress_writes_a_png_of_the_figure_size(tmp_path: Path) -> None:
    path = tmp_path / "progress.png"
    draw_progress(path, training_log(30))
    pixels = matplotlib_image.imread(path)
    assert pixels.shape[:2] == (1100, 900)  # 9 x 11 inches at 100 dpi
    rgb = pixels[..., :3]
    assert (rgb < 0.3).all(axis=-1).mean() > 0.005  # dark text and axes were drawn
    assert (rgb > 0.97).all(axis=-1).mean() > 0.5  # on a white background
    draw_progress(path, training_log(31))  # redrawn every epoch over the previous picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png"]


def test_a_log_of_one_epoch_gets_an_integer_epoch_axis_and_visible_points() -> None:
    figure = progress_figure(training_log(1))
    seconds = figure.axes[3]
    low, high = seconds.get_xlim()
    assert [tick for tick in seconds.get_xticks() if low <= tick <= high] == [0.0]
    (train_line, _) = figure.axes[0].get_lines()
    assert train_line.get_marker() == "o"  # a single point is drawn as a dot
    figure_png(figure)  # and it renders


def test_values_never_logged_are_reported_in_the_panel_instead_of_an_empty_frame() -> None:
    records = [{"epoch": 0, "train_loss": 0.5, "val_loss": None, "pseudo_dice": {"liver": None},
                "ema_pseudo_dice": None, "learning_rate": None, "epoch_seconds": None}]
    loss, dice, rate, seconds = progress_figure(records).axes[:4]
    assert legend_texts(loss) == ["training"]
    for axis in (dice, rate, seconds):
        assert [text.get_text() for text in axis.texts] == ["not logged"]
    empty = progress_figure([])
    assert all([text.get_text() for text in axis.texts] == ["no epoch logged yet"] for axis in empty.axes)
    figure_png(empty)


def test_figure_helpers_make_png_bytes_of_the_requested_size_and_gaps_for_none() -> None:
    figure = new_figure(width_inches=4, height_inches=2)
    figure.add_subplot().plot(as_plot_values([1.0, None, 3.0]))
    data = figure_png(figure)
    assert data.startswith(b"\x89PNG")
    assert matplotlib_image.imread(io.BytesIO(data)).shape[:2] == (200, 400)
    assert np.isnan(as_plot_values([None])[0])
