"""Fault injection: every stage killed with SIGKILL at seeded points, a full disk, a read-only folder, damaged files,
two processes on one folder, and bad images given to predict.

Every fault must end either in a correct result after rerunning the same command, or in one sentence naming the file
and exit code 2: never a traceback, a partial output that a rerun would trust, or a changed input file. ``FAULTS``
below is the table of faults and expected outcomes; ``python tests/test_faults.py`` prints it as markdown, and
``test_every_fault_in_the_table_has_its_test`` keeps table and tests in step.

A full disk is a real tmpfs of a few hundred KB and a read-only folder a real read-only bind mount, both mounted by
the test (it runs as root); where mounting is not permitted (a container without CAP_SYS_ADMIN), the same faults
are injected as ``OSError(ENOSPC / EROFS)`` from ``os.open``/``os.mkdir`` under the folder (the table test prints
which one ran). Set ``AUTOSEG_TEST_INJECT_FILE_SYSTEM_FAULTS=1`` to force the injection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_helpers import first_identifiers, link_cases, make_model_folder, tiny_configuration

from autoseg.cli import main
from autoseg.errors import UserError
from autoseg.io.images import read_image, read_image_header
from autoseg.utils.files import read_json, write_json
from autoseg.utils.locking import LOCK_FILE_NAME, folder_lock

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET_NAME = "Dataset004_Hippocampus"
CASE_COUNT = 12
CONFIGURATION = "3d_fullres"


# --------------------------------------------------------------------------------------------------------------------
# The table: (stage, fault, expected outcome, the test that shows it)
# --------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fault:
    stage: str
    fault: str
    outcome: str
    test: str  # test function in this module, or "file.py::test" elsewhere


RERUN_EQUALS_CLEAN = "rerun gives output byte-identical to a clean run"
SENTENCE = "one sentence naming the file, exit 2"

FAULTS: tuple[Fault, ...] = (
    Fault("preprocess", "kill -9 after a seeded number of cases (seed 0; seeds 1-3 slow)", RERUN_EQUALS_CLEAN,
          "test_preprocess_killed_at_a_seeded_point_resumes_to_the_clean_result"),
    Fault("preprocess", "second `autoseg plan` while it runs", "refused: names `autoseg preprocess ...` and its pid, "
          "exit 2", "test_preprocess_killed_at_a_seeded_point_resumes_to_the_clean_result"),
    Fault("preprocess", "full disk (tmpfs) mid-run", "one sentence 'no space left' naming a file, exit 2; after "
          "freeing space the rerun equals a clean run", "test_preprocess_on_a_full_disk"),
    Fault("preprocess", "read-only working folder", SENTENCE + "; nothing written",
          "test_read_only_working_folder_is_one_sentence"),
    Fault("preprocess", "truncated CASE.npy, garbage CASE.json, stale .partial file", "rerun redoes those cases, "
          "byte-identical to a clean run", "test_damaged_preprocessed_cases_are_redone_by_a_rerun"),
    Fault("preprocess", "plans.json cut short", SENTENCE, "test_damaged_json_records_are_one_sentence"),
    Fault("train", "kill -9 after a seeded number of epochs (seed 0 before the first checkpoint; slow seeds 1-2 "
          "after the epoch-10 checkpoint)", "rerun --resume starts the fold again (seed 0) or resumes at epoch 10, "
          "and ends with loadable final/latest checkpoints, a log of each epoch once, no temporary file left",
          "test_train_killed_at_a_seeded_point_resumes_and_finishes"),
    Fault("train", "same fold trained twice at once / preprocess during training", "refused: names the running "
          "`autoseg train` and its pid, exit 2; another fold may train at once",
          "test_train_killed_at_a_seeded_point_resumes_and_finishes"),
    Fault("train", "two torchrun ranks on one fold (legitimate, must not be refused or deadlock)", "both train; "
          "only rank 0 locks the fold folder, every rank shares the working folder",
          "test_distributed.py::test_two_torchrun_nodes_with_c10d_rendezvous_end_with_the_weights_rank_zero_saved"),
    Fault("train", "full disk (tmpfs fold folder) at the first checkpoint", "one sentence 'no space left' naming "
          "the checkpoint, exit 2, no checkpoint under its final name; rerun after freeing space finishes",
          "test_train_on_a_full_disk"),
    Fault("train", "checkpoint_latest.pt cut short, then --resume", SENTENCE,
          "test_damaged_checkpoints_are_one_sentence"),
    Fault("train", "preprocessed CASE.npy cut short", SENTENCE + " and `autoseg preprocess` to redo it",
          "test_train_on_a_damaged_preprocessed_case_is_one_sentence"),
    Fault("train", "dataset.json / splits.json cut short", SENTENCE, "test_damaged_json_records_are_one_sentence"),
    Fault("predict", "kill -9 after a seeded number of label maps", "rerun --continue: every output loads, has the "
          "input's geometry and equals a clean run; no temporary file left",
          "test_predict_killed_at_a_seeded_point_continues_to_the_clean_result"),
    Fault("predict", "second predict into the same output folder", "refused: names the running predict, exit 2",
          "test_predict_killed_at_a_seeded_point_continues_to_the_clean_result"),
    Fault("predict", "full disk (tmpfs output folder)", "one sentence 'no space left', exit 2, no label map under "
          "a final name is partial; rerun --continue after freeing space completes", "test_predict_on_a_full_disk"),
    Fault("predict", "read-only output folder", SENTENCE, "test_read_only_working_folder_is_one_sentence"),
    Fault("predict", "read-only model folder", "predicts normally (the model folder is only read)",
          "test_read_only_working_folder_is_one_sentence"),
    Fault("predict", "image with 2 channels for a 1-channel model", SENTENCE + ", nothing written, inputs unchanged",
          "test_bad_predict_inputs_are_one_sentence_and_change_nothing"),
    Fault("predict", "4D image", SENTENCE + ", nothing written, inputs unchanged",
          "test_bad_predict_inputs_are_one_sentence_and_change_nothing"),
    Fault("predict", "NaN voxels", "refused: " + SENTENCE + " (NaN count), nothing written, inputs unchanged",
          "test_bad_predict_inputs_are_one_sentence_and_change_nothing"),
    Fault("predict", "empty (0-byte) image", SENTENCE + ", nothing written, inputs unchanged",
          "test_bad_predict_inputs_are_one_sentence_and_change_nothing"),
    Fault("predict", "garbage bytes named .nii.gz", SENTENCE + ", nothing written, inputs unchanged",
          "test_bad_predict_inputs_are_one_sentence_and_change_nothing"),
    Fault("predict", "checkpoint_final.pt cut short / garbage", SENTENCE, "test_damaged_checkpoints_are_one_sentence"),
    Fault("predict", "inference.json / plans.json cut short", SENTENCE, "test_damaged_json_records_are_one_sentence"),
    Fault("run", "kill -9 mid-training of fold 1", "rerun skips fold 0, finishes fold 1, report and a working model",
          "test_pipeline_run.py::test_run_survives_kill_9_and_produces_a_report_and_a_working_model"),
    Fault("run", "kill -9 at seeded points (slow seeds 0-2: predicting fold 0's validation cases, preprocessing, "
          "fingerprinting)", "rerun finishes: report, inference.json, every fold validated",
          "test_run_killed_at_seeded_points_finishes_on_rerun"),
    Fault("run", "`autoseg run` while a fold trains", "refused: names the running `autoseg train`, exit 2",
          "test_train_killed_at_a_seeded_point_resumes_and_finishes"),
    Fault("run", "read-only working folder", SENTENCE, "test_read_only_working_folder_is_one_sentence"),
    Fault("export", "kill -9 while the archive is written (seeded delay)", RERUN_EQUALS_CLEAN + "; nothing under "
          "the archive's name before", "test_export_killed_while_writing_leaves_nothing_and_reruns_identically"),
    Fault("export", "full disk (tmpfs) for the archive", "one sentence 'no space left' naming the archive, exit 2, "
          "no archive", "test_export_on_a_full_disk"),
    Fault("all", "kill -9 of a command whose forked workers live on", "the lock dies with the command: the rerun "
          "is not refused", "test_a_lock_dies_with_the_process_that_took_it"),
)

STAGES = ("preprocess", "train", "predict", "run", "export")


def fault_table_markdown() -> str:
    rows = ["| stage | fault | outcome |", "| --- | --- | --- |"]
    rows += [f"| {fault.stage} | {fault.fault} | {fault.outcome} |" for fault in FAULTS]
    return "\n".join(rows)


def test_every_fault_in_the_table_has_its_test() -> None:
    names = set(globals())
    for fault in FAULTS:
        if "::" in fault.test:
            file_name, function = fault.test.split("::")
            assert f"def {function}(" in (Path(__file__).parent / file_name).read_text(), fault
        else:
            assert fault.test in names and fault.test.startswith("test_"), fault
    for stage in STAGES:
        kinds = " ".join(fault.fault for fault in FAULTS if fault.stage == stage)
        assert "kill -9" in kinds, f"no kill -9 fault for {stage}"
    how = "tmpfs and read-only bind mounts" if mounts_permitted() else "injected OSError(ENOSPC / EROFS)"
    print(f"\n{fault_table_markdown()}\n\nfull disk and read-only folders: {how}")


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def cli(*arguments: str) -> Outcome:
    """``autoseg ARGUMENTS`` in this process (no interpreter start-up), with its exit code and output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(argument) for argument in arguments])
    return Outcome(code, stdout.getvalue(), stderr.getvalue())


def assert_one_sentence(outcome: Outcome, *must_contain: str) -> str:
    """Exit code 2, no traceback, and exactly one error line (``autoseg CMD: error: ...``) naming ``must_contain``."""
    assert outcome.code == 2, f"exit {outcome.code}\n{outcome.stdout}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    # Progress bars share stderr and may leave the error on the line of a bar: remove them, then only the error
    # line may remain.
    lines = [line.strip() for line in PROGRESS_BAR.sub("\n", outcome.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"autoseg [\w-]+: error: ", lines[0]), outcome.stderr
    message = lines[0].split(": error: ", 1)[1]
    assert message.endswith("."), message
    for text in must_contain:
        assert text in message, f"{text!r} not in: {message}"
    print(f"exit 2: {message}")  # shown with -s: the sentences a user would read
    return message


# A tqdm bar: "desc:  50%|#####     | 1/2 [00:00<00:00,  3.13case/s, loss=2.5]", possibly blanked with spaces.
PROGRESS_BAR = re.compile(r"\r[^\r\n]*?\d+%\|[^|\r\n]*\|[^\]\r\n]*\]|\r\s*(?=[\r\n]|$)")


def start(*arguments: str, log: Path) -> subprocess.Popen:
    """``python -m autoseg ARGUMENTS`` in its own process group (a kill takes its workers too)."""
    with open(log, "w") as stream:  # the child writes through its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "autoseg", *map(str, arguments)], cwd=REPOSITORY, start_new_session=True,
            stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, *, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (code {process.returncode}) before the kill point:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            kill(process)
            raise AssertionError(f"timed out waiting for the kill point:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def partial_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if ".partial" in path.name)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != LOCK_FILE_NAME}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------------------------------------
# Full disk and read-only folders: real mounts where permitted, injected errors otherwise
# --------------------------------------------------------------------------------------------------------------------

@functools.cache
def mounts_permitted() -> bool:
    """Whether this process may mount (root with CAP_SYS_ADMIN), unless the injection is forced."""
    if os.environ.get("AUTOSEG_TEST_INJECT_FILE_SYSTEM_FAULTS") == "1" or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"autoseg-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                          capture_output=True).returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True, capture_output=True)
        return True
    finally:
        probe.rmdir()



def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _inject(folder: Path, error_number: int, monkeypatch: pytest.MonkeyPatch, *, allowed_writes: int = 0) -> None:
    """Fail every write-open and mkdir under ``folder`` (after ``allowed_writes`` opens) with ``error_number``."""
    real_open, real_mkdir = os.open, os.mkdir
    folder = folder.resolve()
    writes = {"count": 0}

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder)

    def refusing_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            writes["count"] += 1
            if writes["count"] > allowed_writes:
                raise OSError(error_number, os.strerror(error_number), str(path))
        return real_open(path, flags, *args, **kwargs)

    def refusing_mkdir(path, *args, **kwargs):
        if inside(path) and not Path(path).is_dir():
            raise OSError(error_number, os.strerror(error_number), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "mkdir", refusing_mkdir)


@contextlib.contextmanager
def full_disk(folder: Path, monkeypatch: pytest.MonkeyPatch, *, size: str, allowed_writes: int) -> Iterator[Path]:
    """``folder`` on a file system of ``size`` (tmpfs), initially empty; or injected ENOSPC after ``allowed_writes``
    write-opens under it. On exit the content is moved to a fresh ``folder`` on the normal disk ("space freed")."""
    folder.mkdir(parents=True, exist_ok=True)
    if not mounts_permitted():
        with monkeypatch.context() as patch:
            _inject(folder, errno.ENOSPC, patch, allowed_writes=allowed_writes)
            yield folder
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
        saved = folder.with_name(folder.name + ".saved")
        shutil.copytree(folder, saved, symlinks=True)
    finally:
        _unmount(folder)
    shutil.rmtree(folder)
    saved.rename(folder)


@contextlib.contextmanager
def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``folder`` as a read-only bind mount of itself (root ignores chmod), or with EROFS injected."""
    if not mounts_permitted():
        with monkeypatch.context() as patch:
            _inject(folder, errno.EROFS, patch)
            yield folder
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        _unmount(folder)


# --------------------------------------------------------------------------------------------------------------------
# Real data: 12 Hippocampus cases (symbolic links to the shared files), a tiny plan, a random model
# --------------------------------------------------------------------------------------------------------------------

def tiny_plan_configuration(features=(4, 8, 16)) -> dict:
    return {**tiny_configuration(dimension=3, spacing=(1.0, 1.0, 1.0), patch_size=(24, 32, 24), features=features),
            "estimated_memory_gb": 0.1}


def link_raw_dataset(source: Path, destination: Path, count: int) -> Path:
    """A raw dataset of ``count`` cases as symbolic links to ``source``'s files (the shared files stay untouched)."""
    (destination / "imagesTr").mkdir(parents=True)
    (destination / "labelsTr").mkdir()
    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    for identifier in first_identifiers(source, count):
        (destination / "imagesTr" / f"{identifier}_0000.nii.gz").symlink_to(
            source / "imagesTr" / f"{identifier}_0000.nii.gz")
        (destination / "labelsTr" / f"{identifier}.nii.gz").symlink_to(source / "labelsTr" / f"{identifier}.nii.gz")
    meta["numTraining"] = count
    (destination / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return destination


@pytest.fixture(scope="module")
def raw_dataset(hippocampus_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_raw_dataset(hippocampus_root, tmp_path_factory.mktemp("raw") / DATASET_NAME, CASE_COUNT)


@pytest.fixture(scope="module")
def clean_work(raw_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORK/<dataset> as a clean, uninterrupted run leaves it: plans, preprocessed cases, a random fold-0 model."""
    folder = make_model_folder(tmp_path_factory.mktemp("clean") / DATASET_NAME, raw_dataset,
                               {CONFIGURATION: tiny_plan_configuration()}, folds=(0,))
    outcome = cli("preprocess", raw_dataset, "--work-dir", folder.parent, "--workers", "1")
    assert outcome.code == 0, outcome.stderr
    return folder


def planned_copy(clean_work: Path, destination_root: Path) -> Path:
    """A working folder as planning leaves it: plans.json and dataset.json only."""
    folder = destination_root / DATASET_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(clean_work / name, folder / name)
    return folder


def full_copy(clean_work: Path, destination_root: Path) -> Path:
    folder = destination_root / DATASET_NAME
    shutil.copytree(clean_work, folder)
    return folder


def assert_same_preprocessing(work: Path, clean_work: Path) -> None:
    for name in ("preprocessed", "ground_truth"):
        assert tree_bytes(work / name) == tree_bytes(clean_work / name), f"{name} differs from a clean run"
    assert partial_files(work) == []


# --------------------------------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow),
                                  pytest.param(3, marks=pytest.mark.slow)])
def test_preprocess_killed_at_a_seeded_point_resumes_to_the_clean_result(
    seed, raw_dataset, clean_work, tmp_path, tree_hashes
) -> None:
    kill_after = random.Random(seed).randint(2, CASE_COUNT - 4)
    inputs_before = tree_hashes(raw_dataset)
    work = planned_copy(clean_work, tmp_path / "work")
    output = work / "preprocessed" / CONFIGURATION
    log = tmp_path / "preprocess.log"
    process = start("preprocess", raw_dataset, "--work-dir", work.parent, "--workers", "1", log=log)
    try:
        wait_for(lambda: len(list(output.glob("*.json"))) >= 1, process, log)
        # A second command that writes the same working folder is refused at once, naming the running one.
        message = assert_one_sentence(cli("plan", raw_dataset, "--work-dir", work.parent), str(work))
        assert f"`autoseg preprocess {raw_dataset}" in message and f"pid {process.pid}" in message
        wait_for(lambda: len(list(output.glob("*.json"))) >= kill_after, process, log)
    finally:
        kill(process)
    assert len(list(output.glob("*.json"))) < CASE_COUNT, "finished before the kill"

    outcome = cli("preprocess", raw_dataset, "--work-dir", work.parent, "--workers", "1")  # the lock died with it
    assert outcome.code == 0, outcome.stderr
    assert_same_preprocessing(work, clean_work)
    assert tree_hashes(raw_dataset) == inputs_before


def test_preprocess_on_a_full_disk(raw_dataset, clean_work, tmp_path, monkeypatch) -> None:
    work = tmp_path / "work" / DATASET_NAME
    with full_disk(work, monkeypatch, size="600k", allowed_writes=6):
        planned_copy(clean_work, tmp_path / "work")
        outcome = cli("preprocess", raw_dataset, "--work-dir", work.parent, "--workers", "1")
        assert_one_sentence(outcome, str(work), "no space left")
        # Whatever was stored under a final name is complete: the arrays load with the shapes their sidecar records.
        output = work / "preprocessed" / CONFIGURATION
        for sidecar in output.glob("*.json"):
            properties = read_json(sidecar)
            assert np.load(sidecar.with_suffix(".npy")).shape[1:] == tuple(properties["shape_after_resampling"])
    # Space freed (the folder moved to a bigger disk): the rerun completes and equals a clean run.
    outcome = cli("preprocess", raw_dataset, "--work-dir", work.parent, "--workers", "1")
    assert outcome.code == 0, outcome.stderr
    assert_same_preprocessing(work, clean_work)


def test_damaged_preprocessed_cases_are_redone_by_a_rerun(raw_dataset, clean_work, tmp_path) -> None:
    work = full_copy(clean_work, tmp_path / "work")
    output = work / "preprocessed" / CONFIGURATION
    identifiers = first_identifiers(raw_dataset, 3)
    truncate(output / f"{identifiers[0]}.npy")
    (output / f"{identifiers[1]}.json").write_bytes(os.urandom(200))
    truncate(output / f"{identifiers[2]}_seg.npy", keep=0.9)
    (output / f".{identifiers[0]}.npy.x1.partial.npy").write_bytes(b"half")
    outcome = cli("preprocess", raw_dataset, "--work-dir", work.parent, "--workers", "1")
    assert outcome.code == 0, outcome.stderr
    assert "3 case(s) preprocessed" in outcome.stdout
    assert_same_preprocessing(work, clean_work)


# --------------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------------

TRAIN_OPTIONS = ("--iterations-per-epoch", "2", "--validation-iterations", "1", "--num-workers", "0", "--threads",
                 "1", "--device", "cpu", "--no-validation-prediction")
CHECKPOINT_EVERY_EPOCHS = 10  # TrainingSettings' default: the latest checkpoint is written every 10 epochs


def train_arguments(raw_dataset: Path, work: Path, fold: str = "0", *extra: str, epochs: int = 1) -> list:
    return ["train", raw_dataset, CONFIGURATION, fold, "--work-dir", work.parent, "--epochs", str(epochs),
            *TRAIN_OPTIONS, *extra]


def logged_epochs(fold_folder: Path) -> int:
    log = fold_folder / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


# Seed 0 (default suite) kills before the first checkpoint, so the rerun starts the fold again; the slow seeds run
# past the checkpoint of epoch 10, so the rerun resumes from it.
@pytest.mark.parametrize(("seed", "epochs"), [(0, 3), pytest.param(1, 13, marks=pytest.mark.slow),
                                              pytest.param(2, 13, marks=pytest.mark.slow)])
def test_train_killed_at_a_seeded_point_resumes_and_finishes(seed, epochs, raw_dataset, clean_work, tmp_path) -> None:
    from_checkpoint = epochs > CHECKPOINT_EVERY_EPOCHS
    chooser = random.Random(seed)
    kill_after = CHECKPOINT_EVERY_EPOCHS + chooser.randint(0, 2) if from_checkpoint else chooser.randint(1, epochs - 2)
    work = full_copy(clean_work, tmp_path / "work")
    shutil.rmtree(work / "models")
    fold_folder = work / "models" / CONFIGURATION / "fold_0"
    arguments = train_arguments(raw_dataset, work, "0", epochs=epochs)
    log = tmp_path / "train.log"
    process = start(*arguments, log=log)
    try:
        wait_for(lambda: (fold_folder / "log.jsonl").is_file(), process, log)
        # The same fold twice is refused; so are commands that rewrite the whole working folder.
        message = assert_one_sentence(cli(*arguments), str(fold_folder))
        assert f"`autoseg train {raw_dataset} {CONFIGURATION} 0" in message and f"pid {process.pid}" in message
        for other in (["preprocess", raw_dataset], ["run", raw_dataset]):
            assert_one_sentence(cli(*other, "--work-dir", work.parent), str(work), "`autoseg train",
                                f"pid {process.pid}")
        # Another fold of the same dataset may train at the same time (one per GPU): its locks are granted.
        with folder_lock(work, shared=True), folder_lock(work / "models" / CONFIGURATION / "fold_1"):
            pass
        wait_for(lambda: logged_epochs(fold_folder) >= kill_after
                 and (fold_folder / "checkpoint_latest.pt").is_file() == from_checkpoint, process, log)
    finally:
        kill(process)
    assert not (fold_folder / "checkpoint_final.pt").is_file(), "finished before the kill"
    (fold_folder / ".checkpoint_latest.pt.x1.partial.pt").write_bytes(b"cut short")  # as a kill mid-write leaves

    outcome = cli(*arguments, "--resume")
    assert outcome.code == 0, outcome.stderr
    if from_checkpoint:
        assert f"resumed from checkpoint_latest.pt at epoch {CHECKPOINT_EVERY_EPOCHS}" in outcome.stdout
    else:
        assert "starting from scratch" in outcome.stdout
    records = [json.loads(line) for line in (fold_folder / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == list(range(epochs))
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt"):
        checkpoint = torch.load(fold_folder / name, map_location="cpu", weights_only=True)
        assert checkpoint["progress"]["epoch"] == epochs
    assert read_json(fold_folder / "training_summary.json")["epochs_completed"] == epochs
    assert partial_files(fold_folder) == []


def test_train_on_a_full_disk(raw_dataset, clean_work, tmp_path, monkeypatch) -> None:
    work = full_copy(clean_work, tmp_path / "work")
    shutil.rmtree(work / "models")
    fold_folder = work / "models" / CONFIGURATION / "fold_0"
    arguments = train_arguments(raw_dataset, work)
    # The fold folder holds room for the log but not for a checkpoint (~130 KB with the optimiser state).
    with full_disk(fold_folder, monkeypatch, size="96k", allowed_writes=2):
        outcome = cli(*arguments)
        assert_one_sentence(outcome, str(fold_folder), "no space left")
        assert not any(fold_folder.glob("checkpoint_*.pt"))
    outcome = cli(*arguments, "--resume")
    assert outcome.code == 0, outcome.stderr
    torch.load(fold_folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert partial_files(fold_folder) == []


def test_train_on_a_damaged_preprocessed_case_is_one_sentence(raw_dataset, clean_work, tmp_path) -> None:
    work = full_copy(clean_work, tmp_path / "work")
    damaged = work / "preprocessed" / CONFIGURATION / f"{first_identifiers(raw_dataset, 1)[0]}.npy"
    truncate(damaged)
    outcome = cli("train", raw_dataset, CONFIGURATION, "0", "--work-dir", work.parent, "--epochs", "1",
                  *TRAIN_OPTIONS)
    assert_one_sentence(outcome, str(damaged), "autoseg preprocess")


# --------------------------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------------------------

PREDICT_OPTIONS = ("--workers", "0", "--threads", "1", "--device", "cpu", "--no-tta")


@pytest.fixture(scope="module")
def predict_inputs(hippocampus_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_cases(hippocampus_root, tmp_path_factory.mktemp("predict") / "inputs",
                      first_identifiers(hippocampus_root, 10))


@pytest.fixture(scope="module")
def clean_predictions(predict_inputs: Path, clean_work: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("predictions") / "clean"
    outcome = cli("predict", "-i", predict_inputs, "-o", output, "-m", clean_work, *PREDICT_OPTIONS)
    assert outcome.code == 0, outcome.stderr
    return output


def assert_predictions_equal(output: Path, clean_predictions: Path, inputs: Path) -> None:
    assert sorted(path.name for path in output.iterdir() if not path.name.startswith(".")) == sorted(
        path.name for path in clean_predictions.iterdir() if not path.name.startswith("."))
    for path in sorted(clean_predictions.glob("*.nii.gz")):
        written = output / path.name
        assert read_image_header(written) == read_image_header(inputs / path.name.replace(".nii.gz", "_0000.nii.gz"))
        assert np.array_equal(read_image(written).array, read_image(path).array), path.name
    assert partial_files(output) == []


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_predict_killed_at_a_seeded_point_continues_to_the_clean_result(
    seed, predict_inputs, clean_work, clean_predictions, tmp_path, tree_hashes
) -> None:
    kill_after = random.Random(seed).randint(1, 6)
    inputs_before = tree_hashes(predict_inputs)
    output = tmp_path / "out"
    arguments = ["predict", "-i", predict_inputs, "-o", output, "-m", clean_work, *PREDICT_OPTIONS]
    log = tmp_path / "predict.log"
    process = start(*arguments, log=log)
    try:
        wait_for(lambda: output.is_dir() and len(list(output.glob("*.nii.gz"))) >= 1, process, log)
        message = assert_one_sentence(cli(*arguments), str(output))
        assert "`autoseg predict -i" in message and f"pid {process.pid}" in message
        wait_for(lambda: len(list(output.glob("*.nii.gz"))) >= kill_after, process, log)
    finally:
        kill(process)
    assert len(list(output.glob("*.nii.gz"))) < 10, "finished before the kill"
    (output / ".hippocampus_001.nii.gz.x1.partial.nii.gz").write_bytes(b"cut short")  # as a kill mid-write leaves

    outcome = cli(*arguments, "--continue")
    assert outcome.code == 0, outcome.stderr
    assert_predictions_equal(output, clean_predictions, predict_inputs)
    assert tree_hashes(predict_inputs) == inputs_before


def test_predict_on_a_full_disk(predict_inputs, clean_work, clean_predictions, tmp_path, monkeypatch) -> None:
    output = tmp_path / "out"
    arguments = ["predict", "-i", predict_inputs, "-o", output, "-m", clean_work, *PREDICT_OPTIONS]
    with full_disk(output, monkeypatch, size="40k", allowed_writes=3):
        assert_one_sentence(cli(*arguments), str(output), "no space left")
        for written in output.glob("*.nii.gz"):  # whatever holds a final name is a complete label map
            assert np.array_equal(read_image(written).array, read_image(clean_predictions / written.name).array)
    outcome = cli(*arguments, "--continue")
    assert outcome.code == 0, outcome.stderr
    assert_predictions_equal(output, clean_predictions, predict_inputs)


def _write_like(reference: Path, destination: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array, isVector=False)
    header = sitk.ReadImage(str(reference))
    if array.ndim == 3:
        image.CopyInformation(header)
    sitk.WriteImage(image, str(destination), True)


def _with_nan_voxels(path: Path) -> None:
    """Every 97th voxel NaN, as float32 (ITK's NIfTI reader would silently read them as 0)."""
    array = read_image(path).array.astype(np.float32)
    array.reshape(-1)[::97] = np.nan
    _write_like(path, path, array)


BAD_INPUTS = {
    # name -> (how to break a copy of the first case, the text the message must contain)
    "extra channel": (lambda case, folder: shutil.copyfile(case, folder / case.name.replace("_0000", "_0001")),
                      "_0001"),
    "4D": (lambda case, folder: _write_like(case, case, np.zeros((2, 4, 5, 6), np.float32)), "4D"),
    "NaN": (lambda case, folder: _with_nan_voxels(case), "NaN"),
    "empty": (lambda case, folder: case.write_bytes(b""), "cannot be read"),
    "garbage": (lambda case, folder: case.write_bytes(os.urandom(4096)), "cannot be read"),
}


@pytest.mark.parametrize("fault", list(BAD_INPUTS))
def test_bad_predict_inputs_are_one_sentence_and_change_nothing(
    fault, hippocampus_root, clean_work, tmp_path, tree_hashes
) -> None:
    identifiers = first_identifiers(hippocampus_root, 2)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for identifier in identifiers:
        shutil.copyfile(hippocampus_root / "imagesTr" / f"{identifier}_0000.nii.gz",
                        inputs / f"{identifier}_0000.nii.gz")
    bad_case = inputs / f"{identifiers[1]}_0000.nii.gz"
    breaks, expected_text = BAD_INPUTS[fault]
    breaks(bad_case, inputs)
    before = tree_hashes(inputs)
    output = tmp_path / "out"
    outcome = cli("predict", "-i", inputs, "-o", output, "-m", clean_work, *PREDICT_OPTIONS)
    assert_one_sentence(outcome, identifiers[1], expected_text)
    assert not (output / f"{identifiers[1]}.nii.gz").exists()
    assert partial_files(output) == [] if output.is_dir() else True
    assert tree_hashes(inputs) == before


# --------------------------------------------------------------------------------------------------------------------
# Damaged records and checkpoints, read-only folders
# --------------------------------------------------------------------------------------------------------------------

def test_damaged_json_records_are_one_sentence(raw_dataset, clean_work, predict_inputs, tmp_path) -> None:
    train = ["train", raw_dataset, CONFIGURATION, "0", "--epochs", "1", *TRAIN_OPTIONS]
    predict = ["predict", "-i", predict_inputs, "-o", tmp_path / "out", *PREDICT_OPTIONS]
    work = full_copy(clean_work, tmp_path / "work")
    write_json(work / "splits.json", [{"train": ["a"], "val": ["b"]}])  # replaced below by a damaged copy
    cases = [
        ("plans.json", ["preprocess", raw_dataset, "--work-dir", work.parent]),
        ("plans.json", [*predict, "-m", work]),
        ("dataset.json", [*train, "--work-dir", work.parent]),
        ("splits.json", [*train, "--work-dir", work.parent]),
        ("inference.json", [*predict, "-m", work]),
    ]
    for name, arguments in cases:
        record = work / name
        original = record.read_bytes() if record.is_file() else b'{"models": [{"configuration": "3d_fullres"}]}\n'
        record.write_bytes(original[: len(original) // 2])
        assert_one_sentence(cli(*arguments), str(record))
        record.write_bytes(original)
        if name == "inference.json":
            record.unlink()


def test_damaged_checkpoints_are_one_sentence(raw_dataset, clean_work, predict_inputs, tmp_path) -> None:
    work = full_copy(clean_work, tmp_path / "work")
    fold_folder = work / "models" / CONFIGURATION / "fold_0"
    final = fold_folder / "checkpoint_final.pt"
    for damage in (truncate, lambda path: path.write_bytes(os.urandom(2048))):
        damage(final)
        outcome = cli("predict", "-i", predict_inputs, "-o", tmp_path / "out", "-m", work, *PREDICT_OPTIONS)
        assert_one_sentence(outcome, str(final))
        assert not list((tmp_path / "out").glob("*.nii.gz"))
    latest = fold_folder / "checkpoint_latest.pt"
    shutil.copyfile(clean_work / "models" / CONFIGURATION / "fold_0" / "checkpoint_final.pt", latest)
    truncate(latest)
    final.unlink()
    outcome = cli("train", raw_dataset, CONFIGURATION, "0", "--work-dir", work.parent, "--epochs", "1",
                  *TRAIN_OPTIONS, "--resume")
    assert_one_sentence(outcome, str(latest))


def test_read_only_working_folder_is_one_sentence(
    raw_dataset, clean_work, predict_inputs, clean_predictions, tmp_path, monkeypatch, tree_hashes
) -> None:
    work = full_copy(clean_work, tmp_path / "work")
    before = tree_hashes(work)
    with read_only(work, monkeypatch):
        for arguments in (
            ["preprocess", raw_dataset, "--work-dir", work.parent, "--overwrite"],
            ["train", raw_dataset, CONFIGURATION, "1", "--work-dir", work.parent, *TRAIN_OPTIONS],
            ["run", raw_dataset, "--work-dir", work.parent, "--folds", "0"],
        ):
            assert_one_sentence(cli(*arguments), str(work))
        # Predicting only reads the model folder: a read-only (e.g. shared) model works.
        outcome = cli("predict", "-i", predict_inputs, "-o", tmp_path / "out", "-m", work, *PREDICT_OPTIONS)
        assert outcome.code == 0, outcome.stderr
    assert tree_hashes(work) == before
    assert_predictions_equal(tmp_path / "out", clean_predictions, predict_inputs)
    read_only_output = tmp_path / "read_only_out"
    read_only_output.mkdir()
    with read_only(read_only_output, monkeypatch):
        outcome = cli("predict", "-i", predict_inputs, "-o", read_only_output, "-m", work, *PREDICT_OPTIONS)
        assert_one_sentence(outcome, str(read_only_output))


HOLD_A_LOCK_AND_FORK = """
import os, sys, time
from autoseg.utils.locking import folder_lock, note_command_line
note_command_line(["preprocess", "DATASET"])
with folder_lock(sys.argv[1]):
    if os.fork() == 0:  # a worker that outlives its parent, as a stuck data-loading worker would
        os.write(1, b"worker\\n")  # after-fork hooks done; one write, never interleaved
        time.sleep(60)
        os._exit(0)
    os.write(1, b"locked\\n")
    time.sleep(60)
"""


def test_a_lock_dies_with_the_process_that_took_it(tmp_path) -> None:
    folder = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_LOCK_AND_FORK, str(folder)], cwd=REPOSITORY,
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        # Both the parent (holding the lock) and its forked worker have started; on a busy machine the worker may be
        # scheduled after the parent, so wait for both before killing the parent.
        assert {holder.stdout.readline().strip() for _ in range(2)} == {"locked", "worker"}
        refused = rf"in use by `autoseg preprocess DATASET` \(pid {holder.pid}, since "
        with pytest.raises(UserError, match=refused), folder_lock(folder, shared=True):
            pass
        holder.kill()  # the parent only: its forked worker lives on, holding the same open lock file
        holder.wait()
        with folder_lock(folder):  # granted: the worker closed its copy of the lock file when it was forked
            assert LOCK_FILE_NAME in os.listdir(folder)
    finally:
        kill(holder)


# --------------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_model_folder(raw_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five folds of a wider random network: ~20 MB of checkpoints, so that writing the archive takes a while."""
    return make_model_folder(tmp_path_factory.mktemp("export") / DATASET_NAME, raw_dataset,
                             {CONFIGURATION: tiny_plan_configuration(features=(16, 32, 64, 128))},
                             folds=(0, 1, 2, 3, 4))


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_export_killed_while_writing_leaves_nothing_and_reruns_identically(
    seed, export_model_folder, tmp_path, tree_hashes
) -> None:
    delay = random.Random(seed).uniform(0.0, 0.2)
    model_before = tree_hashes(export_model_folder)
    clean, killed = tmp_path / "clean.zip", tmp_path / "out" / "model.zip"
    assert cli("export-model", export_model_folder, clean).code == 0
    killed.parent.mkdir()
    log = tmp_path / "export.log"
    process = start("export-model", export_model_folder, killed, log=log)
    try:
        wait_for(lambda: bool(partial_files(killed.parent)), process, log)
        time.sleep(delay)
    finally:
        kill(process)
    assert not killed.exists(), "the archive appeared under its final name before it was complete"
    outcome = cli("export-model", export_model_folder, killed)
    assert outcome.code == 0, outcome.stderr
    assert killed.read_bytes() == clean.read_bytes()
    assert tree_hashes(export_model_folder) == model_before


def test_export_on_a_full_disk(clean_work, tmp_path, monkeypatch) -> None:
    output = tmp_path / "out"
    with full_disk(output, monkeypatch, size="16k", allowed_writes=0):
        assert_one_sentence(cli("export-model", clean_work, output / "model.zip"), str(output / "model.zip"),
                            "no space left")
        assert list(output.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# run (slow: the default suite's kill -9 of `autoseg run` is in test_pipeline_run.py)
# --------------------------------------------------------------------------------------------------------------------

RUN_ARTIFACTS = ("fingerprint.json", "preprocessed/3d_fullres/*.json", "models/3d_fullres/fold_0/log.jsonl",
                 "models/3d_fullres/fold_0/validation/*.nii.gz", "models/3d_fullres/fold_1/log.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_run_killed_at_seeded_points_finishes_on_rerun(seed, raw_dataset, clean_work, tmp_path) -> None:
    chooser = random.Random(seed)
    artifact, extra_delay = chooser.choice(RUN_ARTIFACTS), chooser.uniform(0.0, 1.0)
    work = planned_copy(clean_work, tmp_path / "work")  # the tiny plan is kept (`run` keeps an existing plans.json)
    arguments = ["run", raw_dataset, "--work-dir", work.parent, "--folds", "0", "1", "--epochs", "2",
                 "--iterations-per-epoch", "2", "--workers", "1", "--device", "cpu", "--no-progress"]
    log = tmp_path / "run.log"
    process = start(*arguments, log=log)
    try:
        wait_for(lambda: any(work.glob(artifact)), process, log, timeout=600)
        time.sleep(extra_delay)
    finally:
        kill(process)
    assert not (work / "report.html").exists(), "finished before the kill"
    outcome = cli(*arguments)
    assert outcome.code == 0, outcome.stderr
    assert (work / "report.html").is_file()
    recipe = read_json(work / "inference.json")
    assert recipe["models"][0]["folds"] == [0, 1]
    for fold in (0, 1):
        assert (work / "models" / CONFIGURATION / f"fold_{fold}" / "validation" / "summary.json").is_file()
    assert partial_files(work / "preprocessed") == []


if __name__ == "__main__":
    print(fault_table_markdown())
