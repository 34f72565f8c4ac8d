"""Data-parallel training: two gloo processes on CPU stay in lock-step and only rank 0 writes files; two torchrun
"nodes" meeting at a c10d rendezvous train `autoseg train` to identical weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from autoseg.errors import UserError
from autoseg.records.training_log import read_log
from autoseg.records.work_folder import WorkFolder
from autoseg.training.distributed import (
    DistributedContext,
    split_batch_size,
    split_forced_samples,
    state_dict_fingerprint,
    unwrap_model,
)
from autoseg.training.job import TrainingSettings, build_job
from autoseg.training.loop import train_fold
from autoseg.training.patch_sampling import forced_foreground_samples

WORLD_SIZE = 2
EPOCHS = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, work_dir: str, result_dir: str) -> None:
    """One rank as torchrun would start it: the environment names the world, the code is the plain command's."""
    from test_training import TINY_DATASET

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    # Every autoseg write is atomic (a temporary file renamed into place), so recording os.replace records every file
    # this process wrote.
    written: list[str] = []
    real_replace = os.replace

    def recording_replace(source, destination, *args, **kwargs):
        written.append(str(destination))
        return real_replace(source, destination, *args, **kwargs)

    final_weights: dict[str, torch.Tensor] = {}

    def keep_weights(state) -> None:
        final_weights.clear()
        final_weights.update({k: v.detach().clone() for k, v in unwrap_model(state.network).state_dict().items()})

    job = build_job(
        WorkFolder.for_dataset(work_dir, TINY_DATASET), "3d_fullres", "0",
        write_splits=False,
    )
    settings = TrainingSettings(
        epochs=EPOCHS, iterations_per_epoch=3, validation_iterations=1, num_workers=0, threads=1, device="cpu",
        after_training_hooks=(), show_progress_bar=False, checkpoint_every_epochs=1, seed=0,
    )
    os.replace = recording_replace
    try:
        train_fold(job, settings, epoch_end_callbacks=[keep_weights], log_message=lambda _message: None)
    finally:
        os.replace = real_replace
    torch.save(final_weights, Path(result_dir) / f"weights_rank{rank}.pt")
    (Path(result_dir) / f"written_rank{rank}.json").write_text(json.dumps(written))


def test_two_gloo_processes_train_identical_weights_and_only_rank_zero_writes(tmp_path: Path) -> None:
    from test_training import TINY_DATASET, tiny_job, write_tiny_work_folder

    write_tiny_work_folder(tmp_path)
    job = tiny_job(tmp_path)  # writes splits.json before the ranks start, as a first single-process command would
    results = tmp_path / "results"
    results.mkdir()
    torch.multiprocessing.spawn(
        _worker, args=(free_port(), str(tmp_path), str(results)), nprocs=WORLD_SIZE, join=True
    )
    weights = [torch.load(results / f"weights_rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks disagree on {name}"

    written = [json.loads((results / f"written_rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert written[1] == []
    assert {Path(p).name for p in written[0]} >= {"log.jsonl", "checkpoint_latest.pt", "checkpoint_final.pt"}
    log = read_log(job.fold_folder / "log.jsonl")
    assert [record["epoch"] for record in log] == list(range(EPOCHS))
    # The saved model is the one both ranks hold.
    final = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    for name, tensor in weights[0].items():
        assert torch.equal(final["network"][name], tensor)
    assert TINY_DATASET in str(job.fold_folder)
    # The summary records that both ranks ended with the saved weights.
    summary = json.loads((job.fold_folder / "training_summary.json").read_text())
    assert summary["weights_sha256_per_rank"] == [state_dict_fingerprint(weights[r]) for r in range(WORLD_SIZE)]
    assert summary["weights_sha256_per_rank"] == [state_dict_fingerprint(final["network"])] * WORLD_SIZE


NODE_TIMEOUT_SECONDS = 150


def _start_torchrun_node(*, endpoint: str, rendezvous_id: str, work_dir: Path, log: Path) -> subprocess.Popen:
    """One "node": a torchrun agent (``python -m torch.distributed.run`` is the ``torchrun`` script) with one worker
    running ``autoseg train``, in its own session so that it and its worker can be killed together."""
    from test_training import TINY_DATASET

    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rendezvous_id,
        "--local-addr", "127.0.0.1", "--max-restarts", "0", "--monitor-interval", "0.2",
        "-m", "autoseg", "train", TINY_DATASET, "3d_fullres", "0", "--work-dir", str(work_dir),
        "--epochs", str(EPOCHS), "--iterations-per-epoch", "3", "--validation-iterations", "1", "--num-workers", "0",
        "--device", "cpu", "--threads", "1", "--no-validation-prediction",
    ]
    repository = str(Path(__file__).resolve().parents[1])
    environment = {
        **os.environ, "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")])),
    }
    with open(log, "wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def test_two_torchrun_nodes_with_c10d_rendezvous_end_with_the_weights_rank_zero_saved(tmp_path: Path) -> None:
    from test_training import tiny_job, write_tiny_work_folder

    write_tiny_work_folder(tmp_path)
    job = tiny_job(tmp_path)  # splits.json exists before either node starts
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous_id = f"autoseg-test-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / f"node{index}.log" for index in range(2)]
    nodes = []
    try:
        for log in logs:
            nodes.append(_start_torchrun_node(endpoint=endpoint, rendezvous_id=rendezvous_id, work_dir=tmp_path,
                                              log=log))
        deadline = time.monotonic() + NODE_TIMEOUT_SECONDS
        for node in nodes:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun nodes still running after {NODE_TIMEOUT_SECONDS} s:\n" + _tails(logs))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], _tails(logs)

    output = "".join(log.read_text(errors="replace") for log in logs)
    assert "2 processes" in output
    summary = json.loads((job.fold_folder / "training_summary.json").read_text())
    fingerprints = summary["weights_sha256_per_rank"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], fingerprints
    final = torch.load(job.fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert state_dict_fingerprint(final["network"]) == fingerprints[0]
    assert [record["epoch"] for record in read_log(job.fold_folder / "log.jsonl")] == list(range(EPOCHS))


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name} ---\n" + log.read_text(errors="replace")[-3000:] for log in logs if log.exists())


def test_forced_foreground_samples_are_split_across_ranks_as_in_one_process() -> None:
    # The global batch keeps the single-process count, on its last samples (the reference's DDP rule).
    for world_size in (1, 2, 3, 4):
        for batch_size in range(world_size, 13):
            forced = forced_foreground_samples(batch_size, 0.33)
            contexts = [DistributedContext(world_size=world_size, rank=rank) for rank in range(world_size)]
            per_rank = [split_forced_samples(batch_size, forced, context) for context in contexts]
            shares = [split_batch_size(batch_size, context) for context in contexts]
            flags = [flag for share, count in zip(shares, per_rank, strict=True)
                     for flag in [False] * (share - count) + [True] * count]
            assert flags == [False] * (batch_size - forced) + [True] * forced, (world_size, batch_size)
            # What each rank's loader makes of the fraction it is given: the same count.
            assert [forced_foreground_samples(share, count / share) for share, count in zip(shares, per_rank,
                                                                                          strict=True)] == per_rank
    assert [split_forced_samples(7, 2, DistributedContext(world_size=2, rank=rank)) for rank in (0, 1)] == [0, 2]


def test_the_global_batch_is_split_across_ranks() -> None:
    shares = [split_batch_size(5, DistributedContext(world_size=2, rank=r)) for r in range(2)]
    assert shares == [3, 2]
    with pytest.raises(UserError, match="smaller than the number of processes"):
        split_batch_size(2, DistributedContext(world_size=4, rank=0))
