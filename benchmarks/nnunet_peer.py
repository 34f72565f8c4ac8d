"""Running the reference, nnU-Net v2, next to autoseg in benchmarks: its virtual environment, folders and set-up.

nnU-Net lives in its own virtual environment (made by ``../shared/tools/nnunet-peer/setup.sh``, relative to the
project root), never in ours; its commands run as subprocesses with ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` pointed into a benchmark's scratch folder. Raw datasets are symbolic links to the shared folder,
never copies. Where both are found: ``locations.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from locations import NNUNET_SETUP, NNUNET_VENV_VARIABLE, datasets_root, nnunet_venv
from locations import REPOSITORY as REPOSITORY  # re-exported: benchmarks import it from here

# The defaults when no argument names them: $AUTOSEG_TEST_DATA or ../shared/datasets, $NNUNET_PEER_VENV or the
# setup script's own default (read once, at import).
SHARED_DATASETS = datasets_root()
DEFAULT_VENV = nnunet_venv()


def load_average() -> float:
    """The 1-minute load average: how many processes wanted the CPUs recently (2 cores here)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def nnunet_environment(*, scratch: Path, venv: Path = DEFAULT_VENV) -> dict[str, str]:
    """nnU-Net's virtual environment on PATH and its three folders pointed into our scratch folder."""
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    environment.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{environment.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        nnUNet_raw=str(scratch / "nnUNet_raw"),
        nnUNet_preprocessed=str(scratch / "nnUNet_preprocessed"),
        nnUNet_results=str(scratch / "nnUNet_results"),
        nnUNet_compile="f",
    )
    return environment


def require_nnunet(venv: Path) -> None:
    """Stop (exit status 2) with one sentence saying how to install nnU-Net or where to point to it."""
    if not (venv / "bin" / "nnUNetv2_predict").is_file():
        print(f"{venv}: nnU-Net not found; run {NNUNET_SETUP} (from the project root), or name its virtualenv "
              f"with --nnunet-venv or {NNUNET_VENV_VARIABLE}", file=sys.stderr)
        raise SystemExit(2)


def run_quietly(command: list[str], *, log: Path, environment: dict[str, str] | None = None) -> None:
    """Run a command with its output in ``log``; on failure show the log's tail and stop."""
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n" + "\n".join(tail))


def dataset_number(dataset_name: str) -> str:
    """``Dataset004_Hippocampus`` -> ``4``: the id nnU-Net's ``-d`` option takes."""
    return str(int(dataset_name[len("Dataset"):].split("_", 1)[0]))


def prepare_nnunet(
    dataset_name: str, *, scratch: Path, venv: Path = DEFAULT_VENV, configurations: tuple[str, ...] = (),
    datasets: Path = SHARED_DATASETS,
) -> Path:
    """Fingerprint and plan with nnU-Net's own commands (and preprocess ``configurations``) unless already done;
    the raw dataset is ``datasets / dataset_name``, linked into the scratch folder.

    Returns nnU-Net's preprocessed folder of the dataset (with ``nnUNetPlans.json``).
    """
    environment = nnunet_environment(scratch=scratch, venv=venv)
    raw = scratch / "nnUNet_raw"
    raw.mkdir(parents=True, exist_ok=True)
    (scratch / "nnUNet_preprocessed").mkdir(exist_ok=True)
    if not (raw / dataset_name).exists():
        (raw / dataset_name).symlink_to(datasets / dataset_name)
    preprocessed = scratch / "nnUNet_preprocessed" / dataset_name
    number = dataset_number(dataset_name)
    if not (preprocessed / "nnUNetPlans.json").is_file():
        for command in (["nnUNetv2_extract_fingerprint", "-d", number, "-np", "2"],
                        ["nnUNetv2_plan_experiment", "-d", number]):
            run_quietly(command, log=scratch / f"{command[0]}_{number}.log", environment=environment)
    for configuration in configurations:
        # The marker lives outside nnU-Net's folder: nnU-Net refuses a folder holding files of another kind.
        done = scratch / f"nnunet_preprocessed_{number}_{configuration}.complete"
        if not done.is_file():
            command = ["nnUNetv2_preprocess", "-d", number, "-c", configuration, "-np", "2"]
            run_quietly(command, log=scratch / f"nnUNetv2_preprocess_{number}_{configuration}.log",
                        environment=environment)
            done.touch()
    return preprocessed
