"""``autoseg run`` end to end on generated demo data: every stage, a report, a usable model, and resumption after
the process is killed mid-training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autoseg.cli import main
from autoseg.data.demo_data import generate_demo_dataset
from autoseg.io.images import read_image_header
from autoseg.utils.files import read_json

RUN_OPTIONS = ["--folds", "0", "1", "--time-per-fold", "6s", "--iterations-per-epoch", "2", "--validation-iterations",
               "4", "--workers", "1"]


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the run and any worker it forked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command_line:
                found.append(int(entry.name))
    return found


def _wait_for(predicate, *, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"autoseg run ended early with code {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for autoseg run")
        time.sleep(0.2)


def test_run_survives_kill_9_and_produces_a_report_and_a_working_model(tmp_path: Path) -> None:
    raw = tmp_path / "Dataset990_Demo3D"
    generate_demo_dataset(raw, kind="3d", num_cases=10, seed=3, progress=False)
    work_dir = tmp_path / "work"
    work = work_dir / raw.name
    command = [sys.executable, "-m", "autoseg", "run", str(raw), "--work-dir", str(work_dir),
               "--configs", "3d_fullres", *RUN_OPTIONS]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    try:
        fold_0 = work / "models" / "3d_fullres" / "fold_0"
        fold_1 = work / "models" / "3d_fullres" / "fold_1"
        # Kill once fold 0 is complete and fold 1 has started training.
        _wait_for(lambda: (fold_0 / "training_summary.json").is_file() and (fold_1 / "log.jsonl").is_file(),
                  timeout=600, process=process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished_fold_0 = (fold_0 / "training_summary.json").stat().st_mtime_ns
    # The killed run's data-loading workers die with it instead of holding their memory as orphans.
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(work_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(work_dir)) == []

    assert main(["run", str(raw), "--work-dir", str(work_dir), "--configs", "3d_fullres", *RUN_OPTIONS]) == 0
    # Fold 0 was not trained again; fold 1 finished and was validated.
    assert (fold_0 / "training_summary.json").stat().st_mtime_ns == finished_fold_0
    assert (fold_1 / "validation" / "summary.json").is_file()
    splits = read_json(work / "splits.json")
    crossval = read_json(work / "models" / "3d_fullres" / "crossval" / "summary.json")
    assert len(crossval["per_case"]) == len(splits[0]["val"]) + len(splits[1]["val"])
    recipe = read_json(work / "inference.json")
    assert recipe["selected"] == "3d_fullres" and recipe["models"][0]["folds"] == [0, 1]
    report = (work / "report.html").read_text()
    for heading in ("Plan", "Training curves", "Model selection", "Cross-validation", "Best and worst"):
        assert heading in report
    assert report.count("data:image/png;base64,") >= 4  # two curves and at least one overlay pair

    # The trained model segments new images in their own geometry, following the recipe without -c.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((raw / "imagesTr").iterdir())[:2]:
        (inputs / path.name).symlink_to(path)
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "predictions"), "-m", str(work),
                 "--workers", "0", "--threads", "1"]) == 0
    for path in sorted(inputs.iterdir()):
        output = tmp_path / "predictions" / path.name.replace("_0000", "")
        assert read_image_header(output) == read_image_header(path)
