"""Progress output: tqdm bars on a terminal, a few plain lines (no carriage returns) when output goes to a file."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import TINY_DATASET, write_tiny_work_folder
from tqdm import tqdm

from autoseg.errors import UserError
from autoseg.utils.progress import LINE_INTERVAL_SECONDS, PROGRESS_VARIABLE, LineProgress, progress_display

REPOSITORY = Path(__file__).resolve().parents[1]


def autoseg_into_a_file(arguments: list[str], log: Path) -> str:
    """``python -m autoseg ARGUMENTS > log 2>&1``, as under SLURM or nohup; returns the log's text."""
    environment = {key: value for key, value in os.environ.items() if key != PROGRESS_VARIABLE}
    with open(log, "w") as stream:
        completed = subprocess.run([sys.executable, "-m", "autoseg", *arguments], cwd=REPOSITORY, stdout=stream,
                                   stderr=subprocess.STDOUT, env=environment, timeout=300)
    text = log.read_text()
    assert completed.returncode == 0, text[-3000:]
    return text


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_training_into_a_log_file_writes_one_plain_line_per_epoch_with_loss_and_eta(tmp_path: Path) -> None:
    write_tiny_work_folder(tmp_path)
    text = autoseg_into_a_file(
        ["train", TINY_DATASET, "3d_fullres", "0", "--work-dir", str(tmp_path), "--epochs", "3",
         "--iterations-per-epoch", "4", "--validation-iterations", "1", "--num-workers", "0", "--device", "cpu",
         "--threads", "1", "--no-validation-prediction"],
        tmp_path / "train.log",
    )
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if re.match(r"epoch \d+", line)]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 0", "epoch 1", "epoch 2"], text
    for line in epoch_lines:
        assert re.search(r"train loss \d+\.\d+", line) and "pseudo-Dice [" in line, line
        assert re.search(r", \d+\.\d s, ETA \d", line), line  # the epoch's seconds, then the time still to go
    assert epoch_lines[-1].endswith("ETA 0.0 s")


def test_demo_data_into_a_log_file_says_each_step_in_one_line(tmp_path: Path) -> None:
    text = autoseg_into_a_file(["demo", "--data-only", "--num-cases", "4", "--workers", "1", "--work-dir",
                                str(tmp_path)], tmp_path / "demo.log")
    assert "\r" not in text
    assert re.search(r"^generating 3d demo: 4 cases in \d", text, re.MULTILINE), text
    assert re.search(r"^checking cases: 4 cases in \d", text, re.MULTILINE), text
    assert len(text.splitlines()) < 15, text


def test_plain_lines_come_at_most_once_per_interval_then_a_final_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    with LineProgress(total=1000, description="preprocess", stream=stream, clock=clock) as display:
        for _ in range(1000):
            clock.now += 0.1  # 100 s of work in 1000 steps
            display.update()
            display.set_postfix(loss="0.1234")
    lines = stream.getvalue().splitlines()
    assert len(lines) == int(100 / LINE_INTERVAL_SECONDS) + 1, lines
    assert lines[0] == "preprocess: 300/1000 cases (30 %), 30 s, ETA 1 min 10 s, loss 0.1234"
    assert lines[-1] == "preprocess: 1000 cases in 1 min 40 s, loss 0.1234"


def test_open_ended_work_reports_as_it_goes() -> None:
    """Work of unknown length (an iterable without a length) still writes a line per interval, not silence."""
    clock, stream = FakeClock(), io.StringIO()
    with LineProgress(total=None, description="collect", stream=stream, clock=clock) as display:
        for _ in range(3):
            clock.now += LINE_INTERVAL_SECONDS
            display.update()
    assert stream.getvalue().splitlines() == [
        "collect: 1 case, 30 s", "collect: 2 cases, 1 min 00 s", "collect: 3 cases, 1 min 30 s",
        "collect: 3 cases in 1 min 30 s",
    ]


def test_plain_lines_stop_without_a_final_line_when_the_work_fails() -> None:
    clock, stream = FakeClock(), io.StringIO()
    failing = LineProgress(total=10, description="predict", stream=stream, clock=clock)
    with pytest.raises(RuntimeError), failing as display:
        display.update(3)
        raise RuntimeError("disk full")
    unfinished = LineProgress(range(10), description="ensemble", stream=stream, clock=clock)
    for index in unfinished:
        if index == 4:
            break
    unfinished.close()
    assert stream.getvalue() == ""  # the error, not a progress line, is what the log should end with


def test_the_stream_chooses_bars_or_lines_and_the_variable_overrides_it(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_VARIABLE, raising=False)
    assert isinstance(progress_display(total=3, stream=Terminal()), tqdm)
    assert isinstance(progress_display(total=3, stream=io.StringIO()), LineProgress)
    for mode, expected in (("bars", "\r"), ("lines", "demo: 3 cases in"), ("none", "")):
        monkeypatch.setenv(PROGRESS_VARIABLE, mode)
        stream = io.StringIO()
        for _ in progress_display(range(3), description="demo", stream=stream):
            pass
        assert expected in stream.getvalue() and (mode != "none" or stream.getvalue() == ""), mode
    monkeypatch.setenv(PROGRESS_VARIABLE, "fancy")
    with pytest.raises(UserError, match="AUTOSEG_PROGRESS"):
        progress_display(total=3, stream=io.StringIO())


def test_inner_displays_and_switched_off_displays_write_nothing_to_a_log(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_VARIABLE, raising=False)
    stream = io.StringIO()
    for enabled, lines_in_logs in ((True, False), (False, True)):
        display = progress_display(total=2, description="sliding window", enabled=enabled, lines_in_logs=lines_in_logs,
                                   stream=stream)
        display.update(2)
        display.close()
    assert stream.getvalue() == ""
