"""Benchmark: seconds per case of ``autoseg predict`` next to nnU-Net v2's ``nnUNetv2_predict`` on CPU.

What is compared: both tools segment the same N real Hippocampus cases (a folder of symbolic links to the shared
``Dataset004_Hippocampus/imagesTr``) with one fold of a 3d_fullres U-Net, on the CPU, each with
its own defaults (worker processes, threads, sliding-window step, Gaussian weighting), once with test-time mirroring
(TTA) and once without. The time is the wall time of the whole command divided by N, so start-up, reading,
preprocessing, the network, resampling back and writing are all included, as a user would experience them.
autoseg runs with its default precision (``auto``: bfloat16 on CPUs with native bfloat16, else float32) and, as an
extra line, with ``--precision float32`` (nnU-Net always computes in float32 on CPU).

Why the weights are random: inference speed does not depend on the weights' values, only on the network's shape
and the data, so neither tool needs training. Each tool gets a freshly initialised network of its own plan for the
Hippocampus dataset: autoseg's planner (``autoseg plan``) and nnU-Net's own fingerprinting and planning commands
(run in nnU-Net's virtual environment); both plans give the same 3d_fullres architecture (the parameter counts are
printed so this can be checked). Both model folders are built in a scratch folder; nothing is trained.

Runs of the two tools are interleaved round by round, and the 1-minute load average is printed next to every
measurement, because the machine is shared and timings are noisy. The goal is autoseg/nnU-Net <= 0.5.

Usage (nnU-Net installed by ``../shared/tools/nnunet-peer/setup.sh``, relative to the project root):

    python benchmarks/predict_speed.py [--cases 10] [--rounds 2] [--scratch FOLDER] [--datasets-root FOLDER]
        [--nnunet-venv FOLDER]

The shared datasets and nnU-Net's virtualenv default to ``$AUTOSEG_TEST_DATA`` (else ``../shared/datasets``) and
``$NNUNET_PEER_VENV`` (else the setup script's default); see ``benchmarks/locations.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from locations import add_datasets_root_argument, add_nnunet_venv_argument, require_datasets
from nnunet_peer import (
    SHARED_DATASETS,
    load_average,
    nnunet_environment,
    prepare_nnunet,
    require_nnunet,
    run_quietly,
)

DATASET_NAME = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"

# Runs inside nnU-Net's virtual environment: initialise nnU-Net's own network for its 3d_fullres plan and store it
# as a fold-0 checkpoint in the layout nnUNetv2_predict expects. Only nnU-Net's public classes are called.
NNUNET_MODEL_SCRIPT = """
import shutil, sys, torch
from pathlib import Path
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
preprocessed, output = Path(sys.argv[1]), Path(sys.argv[2])
(output / "fold_0").mkdir(parents=True, exist_ok=True)
for source, target in [("dataset.json", "dataset.json"), ("nnUNetPlans.json", "plans.json"),
                       ("dataset_fingerprint.json", "dataset_fingerprint.json")]:
    shutil.copyfile(preprocessed / source, output / target)
plans_manager = PlansManager(load_json(str(output / "plans.json")))
configuration = plans_manager.get_configuration("3d_fullres")
torch.manual_seed(0)
network = nnUNetTrainer.build_network_architecture(plans_manager, configuration, 1, 3, enable_deep_supervision=False)
print(sum(p.numel() for p in network.parameters()))
torch.save({"network_weights": network.state_dict(), "init_args": {"configuration": "3d_fullres"},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
           output / "fold_0" / "checkpoint_final.pth")
"""


def build_nnunet_model(*, scratch: Path, venv: Path, datasets: Path = SHARED_DATASETS) -> int:
    """Fingerprint and plan with nnU-Net's commands, then write a random-weight fold 0; return its parameter count."""
    environment = nnunet_environment(scratch=scratch, venv=venv)
    preprocessed = prepare_nnunet(DATASET_NAME, scratch=scratch, venv=venv, datasets=datasets)
    output = scratch / "nnUNet_results" / DATASET_NAME / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", NNUNET_MODEL_SCRIPT, str(preprocessed), str(output)],
        env=environment, check=True, capture_output=True, text=True,
    )
    return int(result.stdout.split()[-1])


def build_autoseg_model(*, scratch: Path, datasets: Path = SHARED_DATASETS) -> tuple[Path, int]:
    """Plan with ``autoseg plan``, then write a random-weight fold 0 checkpoint; return the model folder and size."""
    import torch

    from autoseg.data.raw_folder import load_raw_dataset
    from autoseg.networks import build_network
    from autoseg.records.checkpoint import save_checkpoint
    from autoseg.records.plans import load_plans
    from autoseg.utils.files import write_json

    work = scratch / "autoseg_work"
    model = work / DATASET_NAME
    raw = datasets / DATASET_NAME
    if not (model / "plans.json").is_file():
        command = [sys.executable, "-m", "autoseg", "plan", str(raw), "--work-dir", str(work),
                   "--workers", "2"]
        run_quietly(command, log=scratch / "autoseg_plan.log")
    if not (model / "dataset.json").is_file():
        write_json(model / "dataset.json", load_raw_dataset(raw).to_dict())
    configuration = load_plans(model / "plans.json").configuration(CONFIGURATION)
    torch.manual_seed(0)
    network = build_network(configuration, in_channels=1, out_channels=3)
    save_checkpoint(
        model / "models" / CONFIGURATION / "fold_0" / "checkpoint_final.pt",
        {"network": network.state_dict(), "configuration": configuration.to_json(),
         "configuration_name": CONFIGURATION},
    )
    return model, sum(parameter.numel() for parameter in network.parameters())


def link_cases(*, scratch: Path, cases: int, datasets: Path = SHARED_DATASETS) -> Path:
    """A folder of symbolic links to the first ``cases`` Hippocampus images (no copies of the shared data)."""
    folder = scratch / "input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    images = sorted((datasets / DATASET_NAME / "imagesTr").glob("*_0000.nii.gz"))[:cases]
    for image in images:
        (folder / image.name).symlink_to(image)
    return folder


def time_command(
    command: list[str], *, output: Path, cases: int, log: Path, environment: dict[str, str] | None = None
) -> float:
    """Seconds per case of one whole command (start-up included), into a fresh output folder."""
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    run_quietly(command, log=log, environment=environment)
    seconds = (time.perf_counter() - start) / cases
    written = len(list(output.glob("*.nii.gz")))
    if written != cases:
        sys.exit(f"{' '.join(command)} wrote {written} label maps for {cases} cases; see {log}")
    return seconds


def measurements(*, scratch: Path, venv: Path, model: Path, input_folder: Path, cases: int) -> dict:
    """The commands to time, by label: (function running it once -> seconds per case, which nnU-Net line it faces)."""
    import torch

    from autoseg.utils.precision import resolve_precision

    nnunet = nnunet_environment(scratch=scratch, venv=venv)

    def nnunet_run(*extra: str):
        command = ["nnUNetv2_predict", "-i", str(input_folder), "-o", str(scratch / "out_nnunet"), "-d", "4",
                   "-c", CONFIGURATION, "-f", "0", "-device", "cpu", *extra]
        return lambda: time_command(command, output=scratch / "out_nnunet", cases=cases,
                                    log=scratch / "nnunet_predict.log", environment=nnunet)

    def autoseg_run(*extra: str):
        command = [sys.executable, "-m", "autoseg", "predict", "-i", str(input_folder), "-o",
                   str(scratch / "out_autoseg"), "-m", str(model), "-c", CONFIGURATION, "--device", "cpu", *extra]
        return lambda: time_command(command, output=scratch / "out_autoseg", cases=cases,
                                    log=scratch / "autoseg_predict.log")

    default_precision = resolve_precision("auto", torch.device("cpu"))
    return {
        "nnU-Net  no TTA": (nnunet_run("--disable_tta"), None),
        f"autoseg  no TTA ({default_precision})": (autoseg_run("--no-tta"), "nnU-Net  no TTA"),
        "autoseg  no TTA float32": (autoseg_run("--no-tta", "--precision", "float32"), "nnU-Net  no TTA"),
        "nnU-Net  TTA": (nnunet_run(), None),
        f"autoseg  TTA ({default_precision})": (autoseg_run(), "nnU-Net  TTA"),
        "autoseg  TTA float32": (autoseg_run("--precision", "float32"), "nnU-Net  TTA"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="Hippocampus cases to segment per run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every command (default 2)")
    parser.add_argument(
        "--scratch", type=Path, default=None, help="folder for models and outputs (default: a temporary one, removed)"
    )
    add_datasets_root_argument(parser)
    add_nnunet_venv_argument(parser)
    args = parser.parse_args()
    require_datasets(args.datasets_root, [DATASET_NAME])
    require_nnunet(args.nnunet_venv)

    temporary = None if args.scratch else tempfile.TemporaryDirectory(prefix="predict_speed_")
    scratch = (args.scratch or Path(temporary.name)).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        print(f"building both random-weight models in {scratch} (not timed) ...", flush=True)
        model, autoseg_parameters = build_autoseg_model(scratch=scratch, datasets=args.datasets_root)
        nnunet_parameters = build_nnunet_model(scratch=scratch, venv=args.nnunet_venv, datasets=args.datasets_root)
        print(f"parameters: autoseg {autoseg_parameters:,}, nnU-Net {nnunet_parameters:,}")
        input_folder = link_cases(scratch=scratch, cases=args.cases, datasets=args.datasets_root)
        commands = measurements(
            scratch=scratch, venv=args.nnunet_venv, model=model, input_folder=input_folder, cases=args.cases
        )
        results: dict[str, list[float]] = {label: [] for label in commands}
        for round_number in range(1, args.rounds + 1):
            for label, (run_once, _) in commands.items():
                seconds = run_once()
                results[label].append(seconds)
                load = load_average()
                print(f"round {round_number}  {label:<26} {seconds:7.2f} s/case   load {load:5.2f}", flush=True)
        print(f"\n{args.cases} cases, {args.rounds} round(s), CPU, {os.cpu_count()} CPUs; "
              "median s/case; ratio = autoseg / nnU-Net")
        print(f"{'command':<26} {'s/case':>8} {'ratio':>7}")
        for label, (_, reference) in commands.items():
            median = statistics.median(results[label])
            ratio = f"{median / statistics.median(results[reference]):7.2f}" if reference else ""
            print(f"{label:<26} {median:8.2f} {ratio}")
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
