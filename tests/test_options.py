"""Every accepted option has an effect: workers, progress bars, pretrained weights on resume, container CPU quotas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_training import quiet, tiny_job, tiny_settings, write_tiny_work_folder

from autoseg.commands import demo
from autoseg.pipeline.run import RunOptions, training_settings
from autoseg.records import checkpoint as checkpoint_files
from autoseg.training.batch_workers import default_number_of_workers
from autoseg.training.distributed import DistributedContext
from autoseg.training.job import default_components
from autoseg.training.loop import train_fold
from autoseg.utils import threads
from autoseg.utils.threads import available_cpus


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    write_tiny_work_folder(tmp_path)
    return tmp_path


def workers_requested(work_dir: Path, **settings) -> dict[str, int]:
    """The ``num_workers`` a one-epoch training asks of its training and validation loaders."""
    requested = {}
    components = default_components()

    def recording(name, make):
        def make_loader(*args, **kwargs):
            requested[name] = kwargs["num_workers"]
            return make(*args, **kwargs)
        return make_loader

    components = dataclasses.replace(
        components,
        make_training_loader=recording("training", components.make_training_loader),
        make_validation_loader=recording("validation", components.make_validation_loader),
    )
    train_fold(tiny_job(work_dir), tiny_settings(epochs=1, iterations_per_epoch=2, **settings),
               components=components, log_message=quiet)
    return requested


def test_the_workers_option_reaches_the_training_loader_and_validation_adds_no_processes(work_dir: Path) -> None:
    assert workers_requested(work_dir, num_workers=1) == {"training": 1, "validation": 0}


def test_on_cpu_training_augments_in_line_by_default_and_a_gpu_gets_background_workers(work_dir: Path) -> None:
    assert workers_requested(work_dir, num_workers=None, device="cpu") == {"training": 0, "validation": 0}
    assert default_number_of_workers(DistributedContext(), "cuda") == max(1, min(8, available_cpus()))


def test_run_leaves_training_workers_to_the_device_and_passes_no_progress_to_every_fold() -> None:
    settings = training_settings(RunOptions(workers=3, progress=False, time_per_fold="2m"))
    assert settings.num_workers is None and settings.show_progress_bar is False and settings.resume
    assert training_settings(RunOptions()).show_progress_bar is True


def test_demo_no_progress_reaches_the_pipeline(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def fake_pipeline(dataset_root, work_dir, options):
        seen.append(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(demo, "run_pipeline", fake_pipeline)
    run = demo.DemoRun(work_dir=tmp_path, kind="3d", num_cases=2, seed=0, workers=1, progress=False)
    with pytest.raises(RuntimeError, match="stop here"):
        demo.stage_pipeline(run)
    assert seen[0].progress is False and seen[0].workers == 1


def test_resume_before_the_first_checkpoint_still_starts_from_the_pretrained_weights(work_dir: Path) -> None:
    job = tiny_job(work_dir)
    train_fold(job, tiny_settings(epochs=1, iterations_per_epoch=2), log_message=quiet)
    pretrained = work_dir / "pretrained.pt"
    (job.fold_folder / checkpoint_files.FINAL_CHECKPOINT).rename(pretrained)
    for leftover in job.fold_folder.glob("checkpoint_*.pt"):
        leftover.unlink()  # the fold has no checkpoint yet: --resume has nothing to resume from
    messages: list[str] = []
    train_fold(job, tiny_settings(epochs=1, iterations_per_epoch=1, resume=True, pretrained=str(pretrained)),
               log_message=messages.append)
    assert any(message.startswith(f"pretrained weights from {pretrained}") for message in messages), messages
    assert any("to resume from: starting from scratch" in message for message in messages)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "100000 100000\n"}, 1),  # cgroup v2: one CPU's worth of time
        ({"cpu.max": "max 100000\n"}, None),  # unlimited
        ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # v1: 1.5 CPUs, rounded up
    ],
)
def test_a_container_cpu_quota_limits_threads_and_workers(tmp_path: Path, monkeypatch, files, expected) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self_cgroup").write_text("0::/\n")
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(threads, "PROCESS_CGROUP", tmp_path / "self_cgroup")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    if expected is None:
        assert threads.available_cpus() == 64
        return
    assert threads.available_cpus() == expected
    before = torch.get_num_threads()
    try:
        assert threads.set_torch_threads() == expected and torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
