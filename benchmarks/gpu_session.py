"""GPU session: every GPU measurement autoseg wants, as one prepared run for a lent GPU machine (issues 13 and 26).

The session is a table of steps (:func:`session_steps`), run in order under one deadline (``--budget`` seconds,
default 510 s: under 9 minutes). Each step has its own time cap and keeps a reserve of seconds for the steps after
it: its command is stopped (its whole process group) after ``min(cap, seconds to the deadline - reserve)``, so a
slow step cannot starve the later ones, and a step that fails or times out is recorded and the session goes on.

=====================  ===============================================================================
env                    what the machine has (nvidia-smi, python, torch, CUDA); installs the carried wheels when
                       autoseg's dependencies are missing, and autoseg itself (offline, GPU session only)
synthetic_data         ``autoseg demo --data-only --kind 3d``, only when there is no Hippocampus (or ``--synthetic``)
data                   ``autoseg plan`` + ``autoseg preprocess -c 3d_fullres`` of Hippocampus (the carried subset)
memory_model           ``benchmarks/memory_model.py --fit`` (on CUDA: mixed precision, budgets 4/8/16 GB)
throughput_model       ``benchmarks/throughput_model.py --device cuda`` (``--quick`` when HC18 is absent)
train_auto             ``autoseg train`` Hippocampus 3d_fullres fold 0, ``--precision auto`` (float16 on CUDA)
train_float32          the same in float32: mixed precision against float32, seconds per iteration from log.jsonl
predict                ``autoseg predict`` of 20 cases with that checkpoint, without and with mirroring (TTA)
nnunet_train_speed     ``benchmarks/train_speed.py`` (autoseg next to nnU-Net v2), where nnU-Net is importable
nnunet_predict_speed   ``benchmarks/predict_speed.py`` likewise
=====================  ===============================================================================

The summary is built from the JSON each step writes (memory_model.py's ``--json``, throughput_model.py's ``--out``,
the folds' ``log.jsonl``, the prediction timings) and the steps table, with the provenance of the run (commit, date,
CPU, GPU): ``summary.json`` and ``summary.md`` in ``--out`` (rewritten after every step, so a run stopped early
still leaves its tables), a copy of the JSON at ``--summary`` (a GPU session: benchmarks/results/gpu_session_cuda.json)
and the tables on stdout. Logs go to ``--out`` too, one per group of steps: 8 files at most, the device tool's limit.
The summary's digests and tables are in benchmarks/gpu_session_summary.py, ``--prepare`` in
benchmarks/gpu_session_prepare.py.

How to run it on a lent GPU (the ``device`` tool):

1. Here, once per checkout (with network): ``bash benchmarks/gpu_session.sh --prepare`` downloads the SimpleITK and
   batchgenerators wheels for the device's python 3.12 into ``.whl/`` and copies the first ``--cases`` Hippocampus
   and ``--hc18-cases`` HC18 cases and the full Hippocampus plan into ``build/gpu_session`` (both git-ignored).
2. The ``run`` tool: command ``bash benchmarks/gpu_session.sh``, timeout_s 560, carry ``[".whl", "build/gpu_session"]``.
3. Copy ``summary.json`` to benchmarks/results/gpu_session_cuda.json, its tables into docs/planning.md ("GPU
   session") and the memory fit into ``PRECISIONS["mixed"]`` of autoseg/planning/memory_model.py.

Check it here first: ``--dry-run`` prints the step table with its caps and exits; ``--tiny`` runs every step on the
CPU with tiny settings (a few minutes; the CUDA and nnU-Net parts say why they are skipped). ``--steps a,b`` runs only
those steps (``train`` and ``nnunet`` name both of theirs; env always runs, and data with the steps that need it).

Folders, none of one machine: the datasets from ``--datasets-root`` (``$AUTOSEG_TEST_DATA``, else
``../shared/datasets``; see benchmarks/locations.py), else the carried copy; nnU-Net's virtualenv from
``--nnunet-venv`` (``$NNUNET_PEER_VENV``), else the python's own virtualenv, else the peer setup script's default;
scratch files in a fresh temporary folder. Exit status: 0 every step ran or was skipped by design, 1 a step failed or
timed out, 2 bad arguments, 3 no python with a CUDA-capable torch (any torch with ``--tiny``), 4 autoseg's
dependencies missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, also when imported

from gpu_session_prepare import (
    CARRY_DATA,
    CARRY_ROOT,
    CONFIGURATION,
    FULL_PLAN,
    HC18,
    HIPPOCAMPUS,
    WHEELS,
    plan_line,
    prepare,
    subset_dataset,
)
from gpu_session_summary import DIGESTS, markdown_table, read_result, render_markdown
from locations import DATASETS_VARIABLE, datasets_root, folder, nnunet_venv
from provenance import REPOSITORY, cpu_model, provenance, relative_to_repository

REQUIRED_MODULES = ("numpy", "SimpleITK", "batchgenerators", "scipy", "tqdm", "matplotlib", "torch")
OPTIONAL_MODULES = ("acvl_utils", "cc3d")  # autoseg labels components with scipy when cc3d is absent
DISTRIBUTIONS = {"acvl_utils": "acvl-utils", "cc3d": "connected-components-3d"}
GROUPS = {"train": ("train_auto", "train_float32"), "nnunet": ("nnunet_train_speed", "nnunet_predict_speed")}
NEEDS_DATA = ("train_auto", "train_float32", "predict")
EXIT_1_MEANS = {"throughput_model": "fewer than 10 configurations predicted within 20 %, see its table"}
TRANSFER_FILE_LIMIT = 8  # files the device tool brings back from $OUT
MINIMUM_STEP_SECONDS = 10  # a step given less than this (or than its cap, if smaller) is skipped


# ----------------------------------------------------------------------------------------------------------------
# Settings, session state and the step table.
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What differs between a GPU session and a tiny CPU check (``--tiny``)."""

    mode: str
    device: str
    budget_s: int
    data_cases: int  # cases linked from the real dataset (0: every case there is)
    synthetic_cases: int
    memory_args: tuple[str, ...]
    train_args: tuple[str, ...]
    train_batch: int | None
    predict_cases: int
    limits: dict[str, tuple[int, int]]  # step -> (cap, reserve) in seconds

    @property
    def tiny(self) -> bool:
        return self.device == "cpu"


GPU_SESSION = Settings(
    mode="GPU session", device="cuda", budget_s=510, data_cases=0, synthetic_cases=30, memory_args=(),
    train_args=("--epochs", "4", "--iterations-per-epoch", "25"), train_batch=None, predict_cases=20,
    limits={"env": (300, 0), "synthetic_data": (90, 360), "data": (90, 360), "memory_model": (180, 225),
            "throughput_model": (170, 125), "train_auto": (60, 80), "train_float32": (60, 35), "predict": (45, 0),
            "nnunet_train_speed": (120, 0), "nnunet_predict_speed": (120, 0)},
)
TINY = Settings(
    mode="tiny (CPU, tiny settings)", device="cpu", budget_s=400, data_cases=12, synthetic_cases=8,
    memory_args=("--quick", "--budgets", "0.5", "--steps", "1"),
    train_args=("--epochs", "2", "--iterations-per-epoch", "1", "--batch-size", "2"), train_batch=2,
    predict_cases=1,
    limits={"env": (120, 0), "synthetic_data": (90, 300), "data": (90, 300), "memory_model": (150, 220),
            "throughput_model": (150, 80), "train_auto": (40, 40), "train_float32": (40, 20), "predict": (40, 0),
            "nnunet_train_speed": (60, 0), "nnunet_predict_speed": (60, 0)},
)


@dataclass
class Session:
    """Where the session writes and what the steps have found so far."""

    settings: Settings
    out: Path
    scratch: Path
    datasets_root: Path
    nnunet_venv: Path | None = None
    python: str = sys.executable
    selected: tuple[str, ...] = ()
    force_synthetic: bool = False
    deadline: float = 0.0
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    data_root: Path | None = None
    dataset_label: str = ""
    synthetic: bool = False
    data_ready: bool = False
    train_batch: int | None = None
    auto_precision: str = "auto"
    gpu_sampling: bool = False
    nnunet_checked: bool = False
    summary_copy: Path | None = None
    records: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def results(self) -> Path:
        """Where the steps write their result JSON (all of it goes into the summary)."""
        return self.scratch / "results"

    @property
    def datasets(self) -> Path:
        """The ``--datasets-root`` the benchmarks get: links to the datasets wherever they were found."""
        return self.scratch / "datasets"

    @property
    def work(self) -> Path:
        return self.scratch / "work"

    @property
    def model(self) -> Path:
        return self.work / (self.data_root.name if self.data_root else "$DATA")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Step:
    """One row of the step table: what runs, under which time cap, and which result file it leaves."""

    name: str
    run: Callable[[Session, float], None]  # does the work; the float is the step's deadline (time.monotonic())
    shows: Callable[[Session], str]  # the command(s), as --dry-run prints them
    cap_s: int
    reserve_s: int = 0
    log: str = ""  # log file in --out (default: the step's name)
    result: str | None = None  # file the step writes in the session's results folder

    @property
    def log_name(self) -> str:
        return f"{self.log or self.name}.log"


class StepSkipped(Exception):
    """A step that does not apply here, with the reason."""


class StepFailed(Exception):
    """A step whose command exited with a status other than 0."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"exit {code}")
        self.code = code


class StepTimedOut(Exception):
    """A step that reached its time cap (or the session's deadline)."""


class SessionAborted(Exception):
    """A finding that makes every later step pointless (no CUDA torch, missing dependencies): the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def runs(argv: Callable[[Session], list[str]], log: str) -> Callable[[Session, float], None]:
    """A step's work that is one command (the list ``argv`` gives for the session), its output in ``log``.log."""

    def run(session: Session, deadline: float) -> None:
        run_command(session, argv(session), log=session.out / f"{log}.log", deadline=deadline)

    return run


def command_step(name: str, argv: Callable[[Session], list[str]], *, cap_s: int, reserve_s: int = 0,
                 result: str | None = None) -> Step:
    """A step that runs one command under its time cap (its log: ``name``.log)."""
    return Step(name=name, run=runs(argv, name), shows=lambda session: shown(argv(session)), cap_s=cap_s,
                reserve_s=reserve_s, result=result)


def shown(argv: list[str]) -> str:
    """A command as the step table shows it: the python as ``python``, paths in the project relative to it, the
    dry run's placeholders ($SCRATCH...) unquoted."""
    words = ["python" if word == sys.executable else word.replace(f"{REPOSITORY}/", "") for word in argv]
    return " ".join(word if re.fullmatch(r"[\w$@%+=:,./-]+", word) else shlex.quote(word) for word in words)


def session_steps(settings: Settings) -> list[Step]:
    """The session's steps in the order they run; each one's time cap and reserve come from ``settings``."""
    table: list[tuple[str, Callable[[Session, float], None], Callable[[Session], str], str, str | None]] = [
        # name, what it does, the command(s) --dry-run shows, log (in --out), result file (in the results folder)
        ("env", environment_step, lambda _: "nvidia-smi; module check; pip install carried wheels, -e .", "env",
         None),
        ("synthetic_data", synthetic_data_step, lambda s: shown(synthetic_argv(s)), "data", None),
        ("data", data_step, lambda s: " && ".join(shown(argv) for argv in data_argvs(s)), "data", None),
        ("memory_model", runs(memory_model_argv, "memory_model"), lambda s: shown(memory_model_argv(s)),
         "memory_model", "memory_model.json"),
        ("throughput_model", throughput_step, lambda s: shown(throughput_argv(s)), "throughput_model",
         "throughput_model.json"),
        ("train_auto", train_step("auto"), lambda s: shown(train_argv(s, "auto")), "autoseg_speed",
         "train_auto.jsonl"),
        ("train_float32", train_step("float32"), lambda s: shown(train_argv(s, "float32")), "autoseg_speed",
         "train_float32.jsonl"),
        ("predict", predict_step, lambda s: " ; ".join(shown(predict_argv(s, extra)) for extra in PREDICTIONS),
         "autoseg_speed", "predict.json"),
        ("nnunet_train_speed", nnunet_step(nnunet_train_argv), lambda s: shown(nnunet_train_argv(s)), "nnunet",
         None),
        ("nnunet_predict_speed", nnunet_step(nnunet_predict_argv), lambda s: shown(nnunet_predict_argv(s)),
         "nnunet", None),
    ]
    return [Step(name, run, shows, *settings.limits[name], log=log, result=result)
            for name, run, shows, log, result in table]


def select_steps(steps: list[Step], wanted: str | None) -> list[Step]:
    """The steps ``--steps`` names (group names expanded), with env and the data the named steps need."""
    if not wanted:
        return steps
    names = {step.name for step in steps}
    chosen = {"env"}
    for word in (part.strip() for part in wanted.split(",") if part.strip()):
        expanded = GROUPS.get(word, (word,))
        unknown = [name for name in expanded if name not in names]
        if unknown:
            print(f"--steps: unknown step '{word}' (steps: {', '.join(s.name for s in steps)}; groups: "
                  f"{', '.join(GROUPS)})", file=sys.stderr)
            raise SystemExit(2)
        chosen.update(expanded)
    if chosen & set(NEEDS_DATA):
        chosen.update(("synthetic_data", "data"))
    return [step for step in steps if step.name in chosen]


# ----------------------------------------------------------------------------------------------------------------
# Running commands and steps.
# ----------------------------------------------------------------------------------------------------------------
def run_command(session: Session, argv: list[str], *, log: Path, deadline: float,
                cwd: Path = REPOSITORY) -> None:
    """Run ``argv`` with its output appended to ``log``; at ``deadline`` its whole process group is stopped
    (SIGTERM, then SIGKILL 10 s later, as ``timeout -k 10`` does) and :class:`StepTimedOut` is raised."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise StepTimedOut
    with log.open("a", encoding="utf-8") as stream:
        stream.write(f"$ {shown(argv)}\n")
        stream.flush()
        process = subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=session.environment, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(process)
            raise StepTimedOut from None
    if code != 0:
        raise StepFailed(code)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, SIGKILL to what is left of it 10 s later (workers included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def gpu_sampler(session: Session, name: str) -> Iterator[dict[str, float]]:
    """Samples nvidia-smi's memory.used and utilisation every 500 ms while a step runs; yields the dict that gets
    the step's peak memory (MiB) and mean utilisation (%) when it ends (empty without sampling)."""
    found: dict[str, float] = {}
    if not session.gpu_sampling:
        yield found
        return
    samples = session.scratch / f"gpu_{name}.csv"
    with samples.open("w") as stream:
        sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                    "--format=csv,noheader,nounits", "-lms", "500"],
                                   stdout=stream, stderr=subprocess.DEVNULL)
    try:
        yield found
    finally:
        sampler.terminate()
        sampler.wait()
        values = [sample for line in samples.read_text().splitlines() if (sample := gpu_sample(line))]
        if values:
            found["gpu_peak_memory_mib"] = max(memory for memory, _ in values)
            found["gpu_mean_utilisation_percent"] = round(sum(u for _, u in values) / len(values))


def gpu_sample(line: str) -> tuple[float, float] | None:
    """(memory.used MiB, utilisation %) of one line of nvidia-smi's CSV, None for a line without both numbers."""
    try:
        memory, utilisation = (float(value) for value in line.split(","))
    except ValueError:  # "[N/A]", a line cut short by the sampler's end, more than one GPU
        return None
    return memory, utilisation


def step_status(step: Step, error: BaseException | None, limit: float) -> str:
    """The steps table's status of a step that ended with ``error`` (None: it succeeded)."""
    if error is None:
        return "ok"
    if isinstance(error, StepSkipped):
        return f"skipped: {error}"
    if isinstance(error, StepTimedOut):
        return f"TIMEOUT after {limit:.0f} s"
    if isinstance(error, StepFailed):
        meaning = EXIT_1_MEANS.get(step.name) if error.code == 1 else None
        return f"FAILED (exit {error.code}{': ' + meaning if meaning else ''})"
    return f"FAILED: {type(error).__name__}: {error}"


def run_step(session: Session, step: Step) -> dict:
    """Run one step under ``min(cap, seconds to the deadline - reserve)``; the record of how it went."""
    log = session.out / step.log_name
    left = session.deadline - time.monotonic() - step.reserve_s
    limit = min(step.cap_s, left)
    record: dict = {"name": step.name, "status": "", "seconds": 0.0, "cap_seconds": step.cap_s,
                    "log": step.log_name, "result_file": step.result}
    error: BaseException | None = None
    if limit < min(step.cap_s, MINIMUM_STEP_SECONDS):
        error = StepSkipped(f"out of time ({session.deadline - time.monotonic():.0f} s of the budget left)")
    else:
        with log.open("a", encoding="utf-8") as stream:
            stream.write(f"===== {step.name}: {step.shows(session)} (timeout {limit:.0f} s)\n")
        print(f"[{session.elapsed():.0f} s] {step.name}: running (timeout {limit:.0f} s, log {step.log_name})",
              flush=True)
        started = time.monotonic()
        with gpu_sampler(session, step.name) as gpu:
            try:
                step.run(session, started + limit)
            except SessionAborted:
                raise
            except Exception as caught:  # a failing step is recorded and the session goes on
                error = caught
        record.update(gpu)
        record["seconds"] = round(time.monotonic() - started, 1)
    record["status"] = step_status(step, error, limit)
    with log.open("a", encoding="utf-8") as stream:
        stream.write(f"===== {step.name}: {record['status']} in {record['seconds']:.0f} s\n")
    print(f"[{session.elapsed():.0f} s] {step.name}: {record['status']} in {record['seconds']:.0f} s", flush=True)
    return record


def run_steps(session: Session, steps: list[Step]) -> int:
    """Run ``steps`` in order, rewriting the summary after each; the exit status (0, 1, or an abort's)."""
    session.out.mkdir(parents=True, exist_ok=True)
    session.results.mkdir(parents=True, exist_ok=True)
    if not session.deadline:
        session.deadline = session.started + session.settings.budget_s
    status = 0
    for step in steps:
        try:
            record = run_step(session, step)
        except SessionAborted as abort:
            session.note(str(abort))
            with (session.out / step.log_name).open("a", encoding="utf-8") as stream:
                stream.write(f"===== {step.name}: FAILED: {abort}\n")
            session.records.append({"name": step.name, "status": f"FAILED: {abort}", "seconds":
                                    round(session.elapsed(), 1), "cap_seconds": step.cap_s, "log": step.log_name,
                                    "result_file": step.result})
            write_summary(session)
            return abort.code
        session.records.append(record)
        if record["status"].startswith(("FAILED", "TIMEOUT")):
            status = 1
        write_summary(session)
    return status


# ----------------------------------------------------------------------------------------------------------------
# Step env: machine, python, dependencies, autoseg.
# ----------------------------------------------------------------------------------------------------------------
def module_versions(names: tuple[str, ...]) -> dict[str, str]:
    """``version`` per importable module, ``MISSING (Error)`` for the others (a broken install is as missing)."""
    found = {}
    importlib.invalidate_caches()
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # whatever breaks the import: missing
            found[name] = f"MISSING ({type(error).__name__})"
            continue
        try:
            found[name] = importlib.metadata.version(DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            found[name] = getattr(module, "__version__", "present")
    return found


def missing_required(versions: dict[str, str]) -> list[str]:
    return [name for name in REQUIRED_MODULES if versions.get(name, "MISSING").startswith("MISSING")]


def machine_report(session: Session, deadline: float) -> str:
    """uname, CPUs, memory and nvidia-smi, as the env log shows them; sets the GPU fact."""
    lines = [f"## machine\n{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n{platform.uname()}",
             f"cpus: {os.cpu_count()}, cpu: {cpu_model()}"]

    def output(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=min(30, deadline - time.monotonic()),
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            return f"{argv[0]}: {error}"

    lines.append(output(["free", "-g"]))
    lines.append("## nvidia-smi\n" + (output(["nvidia-smi"]) if shutil.which("nvidia-smi") else "not on PATH"))
    if shutil.which("nvidia-smi"):
        gpu = output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        session.facts["gpu"] = gpu.splitlines()[0] if gpu and ":" not in gpu.split(",")[0] else ""
    return "\n".join(lines) + "\n"


def python_report(session: Session) -> str:
    """The running python's torch and CUDA; raises :class:`SessionAborted` (3) without the torch this mode needs."""
    try:
        import torch
    except ImportError as error:
        raise SessionAborted(3, f"no importable torch in {session.python} ({error}); PYTHON=... names another") \
            from None
    cuda = torch.cuda.is_available()
    line = (f"python={platform.python_version()} torch={torch.__version__} cuda={cuda} "
            f"cuda_version={torch.version.cuda} device={torch.cuda.get_device_name(0) if cuda else '-'}")
    session.facts["python"] = f"{session.python} {line}"
    if not cuda and not session.settings.tiny:
        raise SessionAborted(3, f"no CUDA-capable torch in {session.python} ({line}); nothing was measured "
                                "(PYTHON=... names another python)")
    from autoseg.utils.precision import resolve_precision

    session.auto_precision = resolve_precision("auto", torch.device(session.settings.device))
    return f"## python\n{session.facts['python']}\n"


def install_wheels(session: Session, deadline: float) -> str:
    """The newest carried wheel of each package autoseg may lack, into a folder put on the path."""
    wheels = []
    for package in ("simpleitk", "batchgenerators", "connected_components_3d", "acvl_utils"):
        found = sorted(path for path in WHEELS.glob("*.whl") if path.name.lower().startswith(f"{package}-"))
        wheels += found[-1:]
    if not wheels:
        return f"no wheels in {relative_to_repository(WHEELS)}: run 'bash benchmarks/gpu_session.sh --prepare' here"
    site = session.scratch / "site"
    log = session.out / "env.log"
    run_command(session, [session.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
                log=log, deadline=min(deadline, time.monotonic() + 180))
    sys.path.insert(0, str(site))
    session.environment["PYTHONPATH"] = f"{site}{os.pathsep}{session.environment['PYTHONPATH']}"
    return f"installed from the carried wheels: {', '.join(path.name for path in wheels)}"


def install_autoseg(session: Session, deadline: float) -> str:
    """``pip install --no-deps -e .`` offline in a GPU session; autoseg comes from PYTHONPATH in any case."""
    if session.settings.tiny:
        return "from PYTHONPATH (tiny run: the local environment is left alone)"
    try:
        run_command(session, [session.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                              "--no-build-isolation", "-e", "."],
                    log=session.out / "env.log", deadline=min(deadline, time.monotonic() + 120))
    except (StepFailed, StepTimedOut):
        return "from PYTHONPATH (pip install -e . did not work offline, see env.log)"
    return "pip install --no-deps -e . (offline); PYTHONPATH as well"


def environment_step(session: Session, deadline: float) -> None:
    """Step env: what the machine has; stops the session without the torch or the modules autoseg needs."""
    log = session.out / "env.log"
    with log.open("a", encoding="utf-8") as stream:
        stream.write(machine_report(session, deadline))
        stream.write(python_report(session))
    session.gpu_sampling = not session.settings.tiny and bool(session.facts.get("gpu"))
    session.environment.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
        part for part in (str(REPOSITORY), session.environment.get("PYTHONPATH", "")) if part))
    missing = missing_required(module_versions(REQUIRED_MODULES))
    if missing:
        with log.open("a", encoding="utf-8") as stream:
            stream.write(f"## missing before the carried wheels: {' '.join(missing)}\n")
        session.note(f"{' '.join(missing)}: {install_wheels(session, deadline)}")
    session.facts["autoseg"] = install_autoseg(session, deadline)
    versions = module_versions(REQUIRED_MODULES + OPTIONAL_MODULES)
    session.facts["modules"] = ", ".join(f"{name} {version}" for name, version in versions.items())
    with log.open("a", encoding="utf-8") as stream:
        stream.write("## modules\n" + "".join(f"{name} {version}\n" for name, version in versions.items()))
    session.provenance = run_provenance(session)
    missing = missing_required(versions)
    if missing:
        raise SessionAborted(4, f"autoseg's dependencies missing here: {' '.join(missing)}. Run "
                                "'bash benchmarks/gpu_session.sh --prepare' where pip works and carry .whl")


def run_provenance(session: Session) -> dict:
    """benchmarks/provenance.py's fields (commit, date, CPU, torch) and the GPU."""
    try:
        found = provenance()
    except ImportError as error:  # no torch or autoseg: what can be said without them
        found = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "cpu": cpu_model(),
                 "cores": os.cpu_count(), "python": platform.python_version(), "error": str(error)}
    found["gpu"] = session.facts.get("gpu") or "none (nvidia-smi absent or failed)"
    return found


# ----------------------------------------------------------------------------------------------------------------
# Steps synthetic_data and data: what the training and prediction use.
# ----------------------------------------------------------------------------------------------------------------
def find_dataset(session: Session, name: str) -> Path | None:
    """The first folder holding ``name``'s dataset.json: the datasets root, shared/datasets in the checkout, or the
    carried copy."""
    for candidate in (session.datasets_root / name, REPOSITORY / "shared" / "datasets" / name, CARRY_DATA / name):
        if (candidate / "dataset.json").is_file():
            return candidate.resolve()
    return None


def link_datasets(session: Session) -> None:
    """The benchmarks' ``--datasets-root``: links to Hippocampus and HC18 wherever they were found."""
    session.datasets.mkdir(parents=True, exist_ok=True)
    for name in (HIPPOCAMPUS, HC18):
        root = find_dataset(session, name)
        if root is None:
            session.note(f"{name}: not on this machine (benchmarks skip its rows)")
            continue
        (session.datasets / name).symlink_to(root)
        if root != (session.datasets_root / name).resolve():
            cases = len(list((root / "imagesTr").glob("*.nii.gz")))
            session.note(f"the benchmarks read {name} from {relative_to_repository(root)} ({cases} cases)")
    session.environment[DATASETS_VARIABLE] = str(session.datasets)


def choose_data(session: Session) -> None:
    """Hippocampus (its first ``data_cases`` cases in a tiny run) for training and prediction, else synthetic."""
    settings = session.settings
    root = None if session.force_synthetic else find_dataset(session, HIPPOCAMPUS)
    if root is None:
        why = "--synthetic" if session.force_synthetic else f"no {HIPPOCAMPUS} on this machine"
        cases = settings.synthetic_cases
        session.synthetic = True
        session.data_root = session.scratch / "demo" / "demo_data" / "Dataset990_Demo3D"
        session.facts["data"] = f"synthetic: autoseg demo --kind 3d, {cases} cases ({why})"
        session.dataset_label = f"synthetic Dataset990_Demo3D, {cases} cases"
        return
    cases = len(list((root / "imagesTr").glob("*_0000.nii.gz")))
    if 0 < settings.data_cases < cases:
        session.data_root = session.scratch / "data" / HIPPOCAMPUS
        subset_dataset(root, session.data_root, settings.data_cases, copy=False)
        session.facts["data"] = f"{HIPPOCAMPUS}, first {settings.data_cases} of {cases} cases (linked)"
        cases = settings.data_cases
    else:
        session.data_root = root
        session.facts["data"] = f"{HIPPOCAMPUS}, {cases} cases in {relative_to_repository(root)}"
    session.dataset_label = f"{HIPPOCAMPUS}, {cases} cases"


def synthetic_argv(session: Session) -> list[str]:
    return [session.python, "-m", "autoseg", "demo", "--data-only", "--kind", "3d", "--num-cases",
            str(session.settings.synthetic_cases), "--work-dir", str(session.scratch / "demo"), "--no-progress"]


def synthetic_data_step(session: Session, deadline: float) -> None:
    """Step synthetic_data: autoseg demo's 3D generator (anisotropic MRI-like cases), when there is no real data."""
    if not session.synthetic:
        raise StepSkipped(f"real data: {session.facts.get('data', HIPPOCAMPUS)}")
    session.note(f"{session.facts['data']}: for training and prediction")
    run_command(session, synthetic_argv(session), log=session.out / "data.log", deadline=deadline)


def data_argvs(session: Session) -> list[list[str]]:
    workers = str(len(os.sched_getaffinity(0)))
    root, work = str(session.data_root or "$DATA"), str(session.work)
    return [[session.python, "-m", "autoseg", "plan", root, "--work-dir", work, "--workers", workers],
            [session.python, "-m", "autoseg", "preprocess", root, "-c", CONFIGURATION, "--work-dir", work,
             "--workers", workers]]


def data_step(session: Session, deadline: float) -> None:
    """Step data: plan and preprocess the training configuration; then the batch the training steps use."""
    for argv in data_argvs(session):
        run_command(session, argv, log=session.out / "data.log", deadline=deadline)
    session.data_ready = True
    session.train_batch = session.settings.train_batch
    if session.synthetic or not FULL_PLAN.is_file():
        return
    # The 5 % dataset cap makes a subset's plan smaller (60 cases: batch 2, not 7): train with the full plan's batch.
    full, here = plan_line(FULL_PLAN), plan_line(session.model / "plans.json")
    if full and full != here:
        if session.settings.tiny:
            session.note(f"the whole dataset's plan ({full}) differs from the subset's ({here}); a tiny run keeps "
                         f"batch {session.train_batch}")
        else:
            session.train_batch = int(full.rsplit(" ", 1)[1])
            session.note(f"training with the whole dataset's batch ({full}, from "
                         f"{relative_to_repository(FULL_PLAN)}); the subset's own plan: {here}")


# ----------------------------------------------------------------------------------------------------------------
# Steps memory_model and throughput_model: the planner's memory and time models against measurements.
# ----------------------------------------------------------------------------------------------------------------
def memory_model_argv(session: Session) -> list[str]:
    """memory_model.py picks mixed precision and 4/8/16 GB by itself on CUDA; the tiny run asks for little."""
    return [session.python, str(REPOSITORY / "benchmarks" / "memory_model.py"), "--fit", "--json",
            str(session.results / "memory_model.json"), *session.settings.memory_args,
            "--datasets-root", str(session.datasets)]


def throughput_quick(session: Session) -> bool:
    """--quick (2 Hippocampus configurations, 2 iterations) in a tiny run, and when HC18 is absent (its full list
    needs both datasets); throughput_model.py then writes no JSON."""
    return session.settings.tiny or find_dataset(session, HC18) is None


def throughput_argv(session: Session) -> list[str]:
    return [session.python, str(REPOSITORY / "benchmarks" / "throughput_model.py"), "--device",
            session.settings.device, "--scratch", str(session.scratch / "throughput_model"), "--out",
            str(session.results / "throughput_model.json"), "--datasets-root", str(session.datasets),
            *(["--quick"] if throughput_quick(session) else [])]


def throughput_step(session: Session, deadline: float) -> None:
    if throughput_quick(session) and not session.settings.tiny:
        session.note(f"throughput_model.py --quick (2 Hippocampus configurations, 2 iterations): its full list "
                     f"needs {HC18}")
    run_command(session, throughput_argv(session), log=session.out / "throughput_model.log", deadline=deadline)


# ----------------------------------------------------------------------------------------------------------------
# Steps train_auto, train_float32, predict: autoseg's own commands, timed.
# ----------------------------------------------------------------------------------------------------------------
PREDICTIONS = (("--no-tta",), ())  # without and with mirroring (TTA)


def fold_folder(session: Session) -> Path:
    return session.model / "models" / CONFIGURATION / "fold_0"


def train_argv(session: Session, precision: str) -> list[str]:
    batch = session.train_batch
    extra = [] if batch is None or "--batch-size" in session.settings.train_args else ["--batch-size", str(batch)]
    return [session.python, "-m", "autoseg", "train", str(session.data_root or "$DATA"), CONFIGURATION, "0",
            "--work-dir", str(session.work), "--device", session.settings.device, "--precision", precision,
            "--validation-iterations", "0", "--no-validation-prediction", *session.settings.train_args, *extra]


def train_step(precision: str) -> Callable[[Session, float], None]:
    """Step train_PRECISION: a fresh fold 0 trained in ``precision``; its log.jsonl is the step's result."""

    def run(session: Session, deadline: float) -> None:
        if not session.data_ready:
            raise StepSkipped("the data step failed")
        shutil.rmtree(fold_folder(session), ignore_errors=True)
        run_command(session, train_argv(session, precision), log=session.out / "autoseg_speed.log",
                    deadline=deadline)
        shutil.copy2(fold_folder(session) / "log.jsonl", session.results / f"train_{precision}.jsonl")

    return run


def predict_argv(session: Session, extra: tuple[str, ...]) -> list[str]:
    return [session.python, "-m", "autoseg", "predict", "-i", str(session.scratch / "predict_in"), "-o",
            str(session.scratch / "predict_out"), "-m", str(session.model), "-c", CONFIGURATION, "-f", "0",
            "--device", session.settings.device, *extra]


def predict_step(session: Session, deadline: float) -> None:
    """Step predict: seconds per case of ``autoseg predict`` (wall time of the whole command, start-up included)."""
    if not (fold_folder(session) / "checkpoint_final.pt").is_file():
        raise StepSkipped("no fold 0 checkpoint (the train steps did not run or finish)")
    inputs = session.scratch / "predict_in"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    assert session.data_root is not None
    for image in sorted((session.data_root / "imagesTr").glob("*_0000.nii.gz"))[:session.settings.predict_cases]:
        (inputs / image.name).symlink_to(image.resolve())
    cases = len(list(inputs.iterdir()))
    result = {"device": session.settings.device, "precision": "default", "cases": cases, "runs": []}
    for extra in PREDICTIONS:
        shutil.rmtree(session.scratch / "predict_out", ignore_errors=True)
        started = time.perf_counter()
        run_command(session, predict_argv(session, extra), log=session.out / "autoseg_speed.log", deadline=deadline)
        seconds = time.perf_counter() - started
        result["runs"].append({"command": " ".join(["autoseg predict", *extra]) + ("" if extra else " (mirroring TTA)"),
                               "cases": cases, "wall_seconds": round(seconds, 2),
                               "seconds_per_case": round(seconds / cases, 3)})
        (session.results / "predict.json").write_text(json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Steps nnunet_*: train_speed.py / predict_speed.py need nnU-Net v2 in a virtual environment (no network there).
# ----------------------------------------------------------------------------------------------------------------
def find_nnunet_venv(session: Session, deadline: float) -> Path | None:
    """--nnunet-venv, else the python's own virtualenv, else $NNUNET_PEER_VENV or the setup script's default: the
    first where nnunetv2 imports."""
    own = Path(session.python).parent.parent
    for candidate in (session.nnunet_venv, own, nnunet_venv()):
        if candidate is None or not (candidate / "bin" / "nnUNetv2_predict").is_file():
            continue
        python = candidate / "bin" / "python"
        try:
            check = subprocess.run([str(python), "-c", "import nnunetv2"], capture_output=True, check=False,
                                   timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise StepTimedOut from None
        if check.returncode == 0:
            return candidate
    return None


def nnunet_train_argv(session: Session) -> list[str]:
    return [session.python, str(REPOSITORY / "benchmarks" / "train_speed.py"), "--datasets", HIPPOCAMPUS,
            "--warmup", "2", "--iterations", "6", "--nnunet-venv", str(session.nnunet_venv or "$NNUNET_VENV"),
            "--scratch", str(session.scratch / "nnunet_scratch"), "--datasets-root", str(session.datasets)]


def nnunet_predict_argv(session: Session) -> list[str]:
    return [session.python, str(REPOSITORY / "benchmarks" / "predict_speed.py"), "--cases", "5", "--rounds", "1",
            "--nnunet-venv", str(session.nnunet_venv or "$NNUNET_VENV"), "--scratch",
            str(session.scratch / "nnunet_scratch"), "--datasets-root", str(session.datasets)]


def nnunet_step(argv: Callable[[Session], list[str]]) -> Callable[[Session, float], None]:
    """A step comparing autoseg with nnU-Net v2 on the CPU (neither script has an autoseg-only mode)."""

    def run(session: Session, deadline: float) -> None:
        if not session.nnunet_checked:
            session.nnunet_checked = True
            session.nnunet_venv = find_nnunet_venv(session, deadline)
            if session.nnunet_venv is not None and not session.settings.tiny:
                session.note(f"nnU-Net v2 found in {relative_to_repository(session.nnunet_venv)}; train_speed.py "
                             f"and predict_speed.py compare on the CPU ({os.cpu_count()} cores)")
        if session.nnunet_venv is None:
            raise StepSkipped("nnU-Net not installable offline (nnunetv2 not importable here), and "
                              "train_speed.py / predict_speed.py have no autoseg-only part")
        if session.settings.tiny:
            raise StepSkipped(f"nnU-Net found in {relative_to_repository(session.nnunet_venv or '.')}, but a tiny "
                              "run does not start its CPU-heavy preprocessing")
        run_command(session, argv(session), log=session.out / "nnunet.log", deadline=deadline)

    return run


# ----------------------------------------------------------------------------------------------------------------
# The summary: built from each step's result JSON and the steps table.
# ----------------------------------------------------------------------------------------------------------------
def step_results(session: Session) -> dict:
    """Per step that wrote its result: the file, a digest where one is defined, and the data itself."""
    results = {}
    for record in session.records:
        name, file = record["name"], record.get("result_file")
        try:
            data = read_result(session.results / file) if file else None
        except ValueError as error:
            results[name] = {"file": file, "error": f"unreadable: {error}"}
            continue
        if data is None:
            if record["status"] == "ok":
                results[name] = {"file": file, "missing": "the step wrote no result file; see its log"}
            continue
        digest = DIGESTS[name](data) if name in DIGESTS else None
        results[name] = {"file": file, **({"digest": digest} if digest is not None else {}), "data": data}
    return results


def training_comparison(session: Session, results: dict) -> dict | None:
    """Mixed precision (``auto``) against float32: plan, batch and the speed-up, when both trainings ran."""
    if "train_auto" not in results and "train_float32" not in results:
        return None
    plans = session.model / "plans.json"
    plan = json.loads(plans.read_text())["configurations"][CONFIGURATION] if plans.is_file() else {}
    comparison = {"dataset": session.dataset_label, "configuration": CONFIGURATION, "fold": 0,
                  "device": session.settings.device, "auto_precision": session.auto_precision,
                  "patch_size": plan.get("patch_size"), "batch_size": session.train_batch or plan.get("batch_size")}
    speeds = [results.get(name, {}).get("digest", {}).get("seconds_per_iteration")
              for name in ("train_auto", "train_float32")]
    if all(speeds):
        comparison["auto_speedup_over_float32"] = round(speeds[1] / speeds[0], 3)
    return comparison


def summary(session: Session) -> dict:
    """The session's summary: provenance, facts, notes, the steps table and every result."""
    results = step_results(session)
    return {
        "session": {"mode": session.settings.mode, "device": session.settings.device,
                    "budget_seconds": session.settings.budget_s, "seconds": round(session.elapsed(), 1),
                    "steps": list(session.selected)},
        "provenance": session.provenance or run_provenance(session),
        "facts": session.facts,
        "notes": session.notes,
        "steps": session.records,
        "training": training_comparison(session, results),
        "results": results,
    }


def write_summary(session: Session, *, final: bool = False) -> dict:
    """summary.json and summary.md in --out (through a partial file, so a reader never sees half of one); at the
    end a copy of the JSON at --summary."""
    found = summary(session)
    text = json.dumps(found, indent=2, default=str) + "\n"
    targets = [(session.out / "summary.json", text), (session.out / "summary.md", render_markdown(found))]
    if final and session.summary_copy is not None:
        targets.append((session.summary_copy, text))
    for path, content in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(content, encoding="utf-8")
        partial.replace(path)
    return found


# ----------------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------------
def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--dry-run", action="store_true", help="print the step table with its time caps and exit")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--tiny", action="store_true", help="every step on the CPU with tiny settings (a check)")
    what.add_argument("--prepare", action="store_true", help="here, with network: wheels, data and plan to carry")
    parser.add_argument("--steps", default="", metavar="A,B",
                        help=f"run only these steps (groups: {', '.join(GROUPS)}); env always runs")
    parser.add_argument("--budget", type=int, default=None, metavar="SECONDS",
                        help="the whole session's deadline (default 510, --tiny 400)")
    parser.add_argument("--synthetic", action="store_true", help="train and predict on synthetic data")
    parser.add_argument("--out", type=folder, default=None, metavar="FOLDER",
                        help="logs and summary (default: $OUT, else build/gpu_session/results; --tiny: "
                             "gpu_session_tiny in the temporary folder)")
    parser.add_argument("--summary", type=Path, default=None, metavar="FILE",
                        help="copy of summary.json (default in a GPU session: "
                             "benchmarks/results/gpu_session_cuda.json; none with --tiny)")
    parser.add_argument("--datasets-root", type=folder, default=datasets_root(), metavar="FOLDER",
                        help=f"folder holding the shared datasets (default: ${DATASETS_VARIABLE}, else "
                             "../shared/datasets beside the project root; then the carried copy)")
    parser.add_argument("--nnunet-venv", type=folder, default=None, metavar="FOLDER",
                        help="nnU-Net v2's virtualenv (default: the python's own, else $NNUNET_PEER_VENV, else "
                             "nnunet-peer/venv in the temporary folder)")
    parser.add_argument("--cases", type=int, default=60, help="--prepare: Hippocampus cases to carry (default 60)")
    parser.add_argument("--hc18-cases", type=int, default=30, help="--prepare: HC18 cases to carry (default 30)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the temporary scratch folder")
    return parser.parse_args(argv)


def print_step_table(session: Session, steps: list[Step]) -> None:
    """--dry-run: the step table, with each step's cap, reserve, log, result file and command."""
    settings = session.settings
    print(f"{settings.mode}: budget {session.settings.budget_s} s, device {settings.device}; placeholders: "
          "$SCRATCH (a fresh temporary folder), $DATA (the training data), $NNUNET_VENV")
    header = ["step", "cap s", "reserve s", "log", "result", "command"]
    rows = [[step.name, step.cap_s, step.reserve_s, step.log_name, step.result or "-", step.shows(session)]
            for step in steps]
    print(markdown_table(header, rows), end="")


def new_session(arguments: argparse.Namespace, settings: Settings, scratch: Path) -> Session:
    if arguments.out is not None:
        out = arguments.out
    elif settings.tiny:
        out = Path(tempfile.gettempdir()) / "gpu_session_tiny"
    else:
        out = folder(os.environ["OUT"]) if os.environ.get("OUT") else CARRY_ROOT / "results"
    summary_copy = arguments.summary or (None if settings.tiny else
                                         REPOSITORY / "benchmarks" / "results" / "gpu_session_cuda.json")
    return Session(settings=settings, out=out, scratch=scratch, datasets_root=arguments.datasets_root,
                   nnunet_venv=arguments.nnunet_venv, force_synthetic=arguments.synthetic,
                   summary_copy=summary_copy)


def finish(session: Session, status: int) -> int:
    """The final summary: in --out, printed, and copied to --summary unless the session was stopped early."""
    files = [path for path in session.out.rglob("*") if path.is_file()]
    if len(files) > TRANSFER_FILE_LIMIT:
        session.note(f"{session.out} holds {len(files)} files: the device tool brings back at most "
                     f"{TRANSFER_FILE_LIMIT}")
    copy = status < 3 and session.summary_copy is not None  # no copy of a session that measured nothing
    found = write_summary(session, final=copy)
    print()
    print(render_markdown(found))
    print(f"summary: {session.out / 'summary.json'}"
          + (f" and {relative_to_repository(session.summary_copy)}" if copy else ""))
    return status


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.prepare:
        return prepare(arguments)
    settings = TINY if arguments.tiny else GPU_SESSION
    if arguments.budget is not None:
        settings = Settings(**{**settings.__dict__, "budget_s": arguments.budget})
    steps = select_steps(session_steps(settings), arguments.steps)
    if arguments.dry_run:
        print_step_table(new_session(arguments, settings, Path("$SCRATCH")), steps)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="gpu_session."))
    session = new_session(arguments, settings, scratch)
    session.selected = tuple(step.name for step in steps)
    session.out.mkdir(parents=True, exist_ok=True)
    for stale in [*session.out.glob("*.log"), session.out / "summary.json", session.out / "summary.md"]:
        stale.unlink(missing_ok=True)
    print(f"{settings.mode}: results in {session.out}, scratch {scratch}, budget {settings.budget_s} s", flush=True)
    try:
        link_datasets(session)
        choose_data(session)
        status = run_steps(session, steps)
        return finish(session, status)
    finally:
        if not arguments.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
