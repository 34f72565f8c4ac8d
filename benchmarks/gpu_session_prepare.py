"""What the GPU session (benchmarks/gpu_session.py) carries to a GPU machine that has no network, made here by
``bash benchmarks/gpu_session.sh --prepare``: the wheels autoseg needs and that machine lacks (``.whl/``), the first
cases of each shared dataset and the whole Hippocampus dataset's plan (``build/gpu_session/``), all of it checked
against the 64 MiB that may travel with the checkout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import REPOSITORY, relative_to_repository

HIPPOCAMPUS = "Dataset004_Hippocampus"
HC18 = "Dataset018_HC18"
CONFIGURATION = "3d_fullres"
CARRY_ROOT = REPOSITORY / "build" / "gpu_session"  # git-ignored (build/); travels with .whl
CARRY_DATA = CARRY_ROOT / "datasets"
FULL_PLAN = CARRY_ROOT / f"{HIPPOCAMPUS}_plans.json"  # the whole dataset's plans.json, made by --prepare
WHEELS = REPOSITORY / ".whl"  # git-ignored
TRAVEL_LIMIT_BYTES = 64 * 1024 * 1024
# The device's python 3.12 has numpy, scipy, tqdm, matplotlib... but neither SimpleITK nor batchgenerators; the
# versions installed here, else these. acvl-utils is sdist-only and optional. SimpleITK's wheel is ~50 MiB.
CARRIED_WHEELS = {"SimpleITK": "2.5.7", "batchgenerators": "0.25.5"}


def download_wheels() -> None:
    """The wheels the device machine lacks, for its python 3.12, into .whl/."""
    WHEELS.mkdir(exist_ok=True)
    for package, default in CARRIED_WHEELS.items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = default
        if any(WHEELS.glob(f"{package.lower()}-*.whl")):
            print(f".whl: a {package} wheel is already there")
            continue
        platforms = [word for name in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                     for word in ("--platform", name)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(WHEELS),
                        f"{package}=={version}"], check=True)


def plan_full_dataset(root: Path) -> None:
    """The whole dataset's plans.json (the training steps use its batch, not the subset's)."""
    with tempfile.TemporaryDirectory(prefix="gpu_session_plan.") as work:
        completed = subprocess.run([sys.executable, "-m", "autoseg", "plan", str(root), "--work-dir", work,
                                    "--workers", "2"], capture_output=True, text=True, cwd=REPOSITORY,
                                   env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), check=False)
        if completed.returncode != 0:
            print("\n".join((completed.stdout + completed.stderr).splitlines()[-20:]), file=sys.stderr)
            raise SystemExit(f"autoseg plan of {root.name} failed")
        shutil.copy2(Path(work) / root.name / "plans.json", FULL_PLAN)
    print(f"{relative_to_repository(FULL_PLAN)}: the full dataset's plans ({CONFIGURATION} {plan_line(FULL_PLAN)})")


def travelling_bytes() -> int:
    """Bytes the device tool sends: tracked and untracked-not-ignored files, .whl and build/gpu_session."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPOSITORY, capture_output=True, check=True).stdout.split(b"\0")
    paths = [REPOSITORY / name.decode() for name in listed if name]
    for carried in (WHEELS, CARRY_ROOT):
        paths += [path for path in carried.rglob("*")] if carried.is_dir() else []
    return sum(path.lstat().st_size for path in paths if path.is_symlink() or path.is_file())


def prepare(arguments: argparse.Namespace) -> int:
    """Wheels, dataset subsets and the full plan for the device machine, which has no network."""
    download_wheels()
    for name, count in ((HIPPOCAMPUS, arguments.cases), (HC18, arguments.hc18_cases)):
        source = arguments.datasets_root / name
        if not (source / "dataset.json").is_file():
            print(f"{relative_to_repository(source)} not found: the session will do without it")
            continue
        if count == 0:
            shutil.rmtree(CARRY_DATA / name, ignore_errors=True)
            continue
        copied = subset_dataset(source, CARRY_DATA / name, count, copy=True)
        print(f"copied the first {copied} cases of {name} to {relative_to_repository(CARRY_DATA / name)}")
    if (arguments.datasets_root / HIPPOCAMPUS / "dataset.json").is_file():
        plan_full_dataset(arguments.datasets_root / HIPPOCAMPUS)
    total = travelling_bytes()
    print(f"travels: checkout, .whl and build/gpu_session: {total / 2**20:.0f} MiB of 64 MiB")
    if total >= TRAVEL_LIMIT_BYTES:
        print("over 64 MiB: lower --cases / --hc18-cases", file=sys.stderr)
        return 1
    print("next: the run tool, command 'bash benchmarks/gpu_session.sh', timeout_s 560, "
          'carry [".whl", "build/gpu_session"]')
    return 0


def subset_dataset(source: Path, target: Path, count: int, *, copy: bool) -> int:
    """A raw dataset folder at ``target`` with ``source``'s first ``count`` cases (copied or linked)."""
    shutil.rmtree(target, ignore_errors=True)
    for part in ("imagesTr", "labelsTr"):
        (target / part).mkdir(parents=True)
    images = sorted((source / "imagesTr").glob("*_0000.nii.gz"))[:count]
    for image in images:
        label = source / "labelsTr" / image.name.replace("_0000.nii.gz", ".nii.gz")
        for path, part in ((image, "imagesTr"), (label, "labelsTr")):
            if copy:
                shutil.copy2(path, target / part / path.name)
            else:
                (target / part / path.name).symlink_to(path)
    for extra in source.glob("*.json"):
        if extra.name != "dataset.json":
            shutil.copy2(extra, target / extra.name)
    meta = json.loads((source / "dataset.json").read_text())
    meta["description"] = f"{meta.get('description', '')} (first {len(images)} of {meta.get('numTraining')} cases)"
    meta["numTraining"] = len(images)
    (target / "dataset.json").write_text(json.dumps(meta, indent=2))
    return len(images)


def plan_line(plans: Path) -> str:
    """``patch PxQxR batch B`` of the training configuration in ``plans``, or nothing."""
    try:
        configuration = json.loads(plans.read_text())["configurations"][CONFIGURATION]
    except (OSError, ValueError, KeyError):
        return ""
    return f"patch {'x'.join(map(str, configuration['patch_size']))} batch {configuration['batch_size']}"
