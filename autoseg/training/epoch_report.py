"""What rank 0 shows and writes after each epoch: the epoch's line, ``log.jsonl``, ``progress.png`` and the
checkpoints that are due."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoseg.records import checkpoint as checkpoint_files
from autoseg.records.training_log import LOG_FILE, write_log
from autoseg.training.checkpointing import CheckpointPolicy
from autoseg.training.job import TrainingJob, TrainingState
from autoseg.training.progress_plot import draw_progress
from autoseg.utils.progress import format_duration

PROGRESS_PLOT = "progress.png"
# Drawing progress.png costs CPU time (docs/training.md); short epochs (tiny runs, short time-sliced epochs) redraw
# it at most this often, and the finished run always draws it once more.
PROGRESS_PLOT_INTERVAL_SECONDS = 30.0


class ProgressPlot:
    """``progress.png`` of the fold, redrawn when ``PROGRESS_PLOT_INTERVAL_SECONDS`` have passed (or when forced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_drawn: float | None = None

    def draw(self, log: list[dict[str, Any]], *, force: bool) -> None:
        now = time.monotonic()
        if not log or (not force and self.last_drawn is not None
                       and now - self.last_drawn < PROGRESS_PLOT_INTERVAL_SECONDS):
            return
        draw_progress(self.path, log)
        self.last_drawn = time.monotonic()


def write_epoch_outputs(
    job: TrainingJob,
    state: TrainingState,
    record: dict[str, Any],
    improved: bool,
    checkpoints: CheckpointPolicy,
    plot: ProgressPlot,
    say: Callable[[str], None],
) -> None:
    """Rank 0 only: log line, log file, progress plot (when due) and due checkpoints."""
    if record["train_loss"] is not None and not math.isfinite(record["train_loss"]):
        say(f"epoch {record['epoch']}: the training loss is not finite; check the labels and the learning rate")
    write_log(job.fold_folder / LOG_FILE, state.log)
    plot.draw(state.log, force=False)
    say(epoch_line(record, seconds_left=state.progress.seconds_left))
    if checkpoints.latest_is_due(state):
        checkpoints.save(state, checkpoint_files.LATEST_CHECKPOINT)
    if improved:
        checkpoints.save(state, checkpoint_files.BEST_CHECKPOINT)


def epoch_line(record: dict[str, Any], *, seconds_left: float | None) -> str:
    """The epoch's one line on standard output (a log file of a run reads as one line per epoch)."""
    dice = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} -" for name, value in
                     record["pseudo_dice"].items())
    train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
    val_loss = "-" if record["val_loss"] is None else f"{record['val_loss']:.4f}"
    return (
        f"epoch {record['epoch']}: train loss {train_loss}, val loss {val_loss}, pseudo-Dice [{dice}], "
        f"EMA {record['ema_pseudo_dice']:.4f}, lr {record['learning_rate']:.2e}, {record['epoch_seconds']:.1f} s, "
        f"ETA {'-' if seconds_left is None else format_duration(seconds_left)}"
    )
