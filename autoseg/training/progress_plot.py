"""``progress.png``: losses, pseudo-Dice, learning rate and epoch time per epoch, from the training log.

Drawn with matplotlib when it is installed (it is not a dependency), else with the built-in PNG renderer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from autoseg.training.png_line_plot import Panel, write_line_plot_png
from autoseg.utils.files import atomic_path


def panels_from_log(records: Sequence[dict[str, Any]]) -> list[Panel]:
    """Four panels: train/validation loss; pseudo-Dice per class, its mean and moving average; lr; epoch seconds and the
    part of them the network waited for augmented batches."""
    class_names = sorted({name for record in records for name in record.get("pseudo_dice", {})}, key=str)
    dice_series: dict[str, list[float | None]] = {
        f"DICE {name}": [record.get("pseudo_dice", {}).get(name) for record in records] for name in class_names
    }
    dice_series["EMA"] = [record.get("ema_pseudo_dice") for record in records]
    return [
        Panel("LOSS", {"TRAIN": [r.get("train_loss") for r in records], "VAL": [r.get("val_loss") for r in records]}),
        Panel("PSEUDO DICE", dice_series),
        Panel("LR", {"LR": [r.get("learning_rate") for r in records]}),
        Panel("EPOCH S", {"TIME": [r.get("epoch_seconds") for r in records],
                          "DATA WAIT": [r.get("data_wait_seconds") for r in records]}),
    ]


def draw_progress(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    panels = panels_from_log(records)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        write_line_plot_png(path, panels)
        return
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True)
    for axis, panel in zip(axes, panels, strict=True):
        for name, values in panel.series.items():
            axis.plot([float("nan") if v is None else v for v in values], label=name.lower())
        axis.set_ylabel(panel.title.lower())
        axis.legend(loc="best")
    axes[-1].set_xlabel("epoch")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    pyplot.close(figure)
