"""The GPU session (benchmarks/gpu_session.py) on the CPU: its step table, and how it treats a step over its cap."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "benchmarks" / "gpu_session.py"


def load_session_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_session"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def dry_run(*arguments: str) -> list[list[str]]:
    """The rows of the step table ``--dry-run`` prints (step, cap, reserve, log, result, command)."""
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *arguments], capture_output=True,
                               text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert str(REPOSITORY) not in completed.stdout  # no folder of this machine in the table
    lines = [line for line in completed.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_dry_run_prints_every_step_with_its_cap_and_result_file() -> None:
    rows = dry_run()
    assert [row[0] for row in rows] == [
        "env", "synthetic_data", "data", "memory_model", "throughput_model", "train_auto", "train_float32",
        "predict", "nnunet_train_speed", "nnunet_predict_speed",
    ]
    by_name = {row[0]: row for row in rows}
    assert by_name["memory_model"][1:5] == ["180", "225", "memory_model.log", "memory_model.json"]
    assert "benchmarks/memory_model.py --fit --json" in by_name["memory_model"][5]
    assert "--device cuda" in by_name["throughput_model"][5]
    assert by_name["train_auto"][4] == "train_auto.jsonl" and "--precision auto" in by_name["train_auto"][5]
    assert "--precision float32" in by_name["train_float32"][5]
    assert "benchmarks/train_speed.py" in by_name["nnunet_train_speed"][5]
    assert "benchmarks/predict_speed.py" in by_name["nnunet_predict_speed"][5]


def test_steps_selects_a_part_and_tiny_shrinks_the_caps() -> None:
    rows = dry_run("--tiny", "--steps", "train,memory_model")
    assert [row[0] for row in rows] == ["env", "synthetic_data", "data", "memory_model", "train_auto",
                                        "train_float32"]
    assert {row[0]: row[1] for row in rows}["train_auto"] == "40"
    assert "--device cpu" in rows[-1][5]


def test_a_step_over_its_cap_is_stopped_and_the_session_goes_on(tmp_path: Path) -> None:
    gpu_session = load_session_module()
    session = gpu_session.Session(settings=gpu_session.TINY, out=tmp_path / "out", scratch=tmp_path / "scratch",
                                  datasets_root=tmp_path)
    write = f"import json; json.dump({{'answer': 42}}, open({str(session.results / 'quick.json')!r}, 'w'))"
    child = tmp_path / "child.pid"  # the slow step's own child process must be stopped with it
    slow = ["sh", "-c", f"sleep 60 & echo $! > {child}; wait"]
    steps = [
        gpu_session.command_step("slow", lambda _: slow, cap_s=1),
        gpu_session.command_step("quick", lambda _: [sys.executable, "-c", write], cap_s=60, result="quick.json"),
    ]
    started = time.monotonic()
    assert gpu_session.run_steps(session, steps) == 1
    assert time.monotonic() - started < 30
    status = Path(f"/proc/{child.read_text().strip()}/status")
    assert not status.exists() or "zombie" in status.read_text()
    summary = json.loads((session.out / "summary.json").read_text())
    statuses = {record["name"]: record["status"] for record in summary["steps"]}
    assert statuses == {"slow": "TIMEOUT after 1 s", "quick": "ok"}
    assert summary["results"]["quick"]["data"] == {"answer": 42}
    assert "commit" in summary["provenance"] and "gpu" in summary["provenance"]
    assert "| slow | TIMEOUT after 1 s |" in (session.out / "summary.md").read_text()
    assert "===== slow: TIMEOUT after 1 s" in (session.out / "slow.log").read_text()
