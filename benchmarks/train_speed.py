"""Benchmark: training iterations per second of ``autoseg train`` next to nnU-Net v2's trainer, on CPU.

What is compared, per dataset (Hippocampus 3d_fullres, HC18 2d): the same plan (patch size, batch size, network;
both planners give the same ones and the script prints them) trained from each tool's own preprocessed data with
its own background augmentation workers, its own thread settings and its own training step. nnU-Net is driven
through its public trainer class exactly as ``nnUNetv2_train -device cpu`` sets it up (all CPUs as torch threads,
its default number of augmentation processes); autoseg through ``autoseg train`` itself, with ``--batch-size`` set
to the plan's batch so that neither tool does less work per step (autoseg would otherwise cap the batch on CPU).

Each tool first runs ``--warmup`` steps that are not timed (workers starting, kernels being chosen), then
``--iterations`` timed steps. A step's time is split into waiting for the next augmented batch ("data") and the
forward/backward/optimiser step ("network"). The ratio printed is nnU-Net's seconds per iteration divided by
autoseg's: the throughput of autoseg relative to nnU-Net (goal >= 1.5). autoseg is measured twice: with its default
precision (``auto``: bfloat16 autocast on CPUs with native bfloat16, else float32) and in float32, nnU-Net's only
precision on CPU.

Usage (nnU-Net installed by ``../shared/tools/nnunet-peer/setup.sh``, relative to the project root; a few dozen
iterations take ~15 minutes):

    python benchmarks/train_speed.py [--datasets Dataset004_Hippocampus Dataset018_HC18] [--scratch FOLDER]
        [--datasets-root FOLDER] [--nnunet-venv FOLDER]

The shared datasets and nnU-Net's virtualenv default to ``$AUTOSEG_TEST_DATA`` (else ``../shared/datasets``) and
``$NNUNET_PEER_VENV`` (else the setup script's default); see ``benchmarks/locations.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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

CONFIGURATIONS = {"Dataset004_Hippocampus": "3d_fullres", "Dataset018_HC18": "2d"}
# (warmup, timed) steps per dataset: an HC18 step of 6 x 640x896 takes tens of seconds on 2 cores.
DEFAULT_ITERATIONS = {"Dataset004_Hippocampus": (4, 16), "Dataset018_HC18": (2, 4)}

# Runs inside nnU-Net's virtual environment and calls only nnU-Net's public trainer methods: set up as
# nnUNetv2_train does for -device cpu, start training (data loaders, workers), then time next(loader) and
# train_step separately. Prints one JSON line.
NNUNET_TRAINING_SCRIPT = """
import json, multiprocessing, os, sys, time, torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
preprocessed, configuration, warmup, timed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(multiprocessing.cpu_count())
plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
dataset_json = load_json(os.path.join(preprocessed, "dataset.json"))
plans["continue_training"] = False  # what nnUNetv2_train's get_trainer_from_args adds for a fresh run
trainer = nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
trainer.on_train_start()
trainer.on_train_epoch_start()
for _ in range(warmup):
    trainer.train_step(next(trainer.dataloader_train))
data_seconds = network_seconds = 0.0
for _ in range(timed):
    started = time.perf_counter()
    batch = next(trainer.dataloader_train)
    loaded = time.perf_counter()
    trainer.train_step(batch)
    data_seconds += loaded - started
    network_seconds += time.perf_counter() - loaded
configuration_plan = trainer.plans_manager.plans["configurations"][configuration]
print(json.dumps({"iterations": timed, "data_seconds": data_seconds, "network_seconds": network_seconds,
                  "patch_size": configuration_plan["patch_size"], "batch_size": configuration_plan["batch_size"]}))
sys.stdout.flush()
os._exit(0)  # the augmentation workers are daemons; do not wait for nnU-Net's end-of-training work
"""


def measure_nnunet(dataset: str, *, scratch: Path, venv: Path, warmup: int, timed: int,
                   datasets: Path = SHARED_DATASETS) -> dict:
    configuration = CONFIGURATIONS[dataset]
    preprocessed = prepare_nnunet(dataset, scratch=scratch, venv=venv, configurations=(configuration,),
                                  datasets=datasets)
    log = scratch / f"nnunet_train_{dataset}.log"
    command = [str(venv / "bin" / "python"), "-c", NNUNET_TRAINING_SCRIPT, str(preprocessed), configuration,
               str(warmup), str(timed)]
    run_quietly(command, log=log, environment=nnunet_environment(scratch=scratch, venv=venv))
    return json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith("{")))


def prepare_autoseg(dataset: str, *, scratch: Path, datasets: Path = SHARED_DATASETS) -> Path:
    """``autoseg plan`` and ``autoseg preprocess`` of the configuration into ``scratch/autoseg_work`` (once)."""
    work = scratch / "autoseg_work"
    configuration = CONFIGURATIONS[dataset]
    folder = work / dataset
    if not (folder / "preprocessed" / configuration).is_dir():
        for stage in (["plan", str(datasets / dataset)],
                      ["preprocess", str(datasets / dataset), "-c", configuration]):
            run_quietly([sys.executable, "-m", "autoseg", *stage, "--work-dir", str(work)],
                        log=scratch / f"autoseg_{stage[0]}_{dataset}.log")
    return folder


def measure_autoseg(dataset: str, *, scratch: Path, warmup: int, timed: int, batch_size: int, precision: str,
                    datasets: Path = SHARED_DATASETS) -> dict:
    """``autoseg train`` with epochs of ``warmup`` steps: the first epoch warms up, the next ones are timed.

    The timings come from the fold's ``log.jsonl`` (``train_seconds``, ``data_wait_seconds`` per epoch)."""
    folder = prepare_autoseg(dataset, scratch=scratch, datasets=datasets)
    configuration = CONFIGURATIONS[dataset]
    epochs = 1 + -(-timed // warmup)
    fold_folder = folder / "models" / configuration / "fold_0"
    shutil.rmtree(fold_folder, ignore_errors=True)  # a fresh run, not a resumed one
    command = [sys.executable, "-m", "autoseg", "train", str(datasets / dataset), configuration, "0",
               "--work-dir", str(scratch / "autoseg_work"), "--epochs", str(epochs),
               "--iterations-per-epoch", str(warmup), "--validation-iterations", "0", "--no-validation-prediction",
               "--batch-size", str(batch_size), "--precision", precision]
    run_quietly(command, log=scratch / f"autoseg_train_{dataset}_{precision}.log")
    records = [json.loads(line) for line in (fold_folder / "log.jsonl").read_text().splitlines()][1:]
    train_seconds = sum(record["train_seconds"] for record in records)
    data_seconds = sum(record["data_wait_seconds"] for record in records)
    return {"iterations": sum(record["iterations"] for record in records), "data_seconds": data_seconds,
            "network_seconds": train_seconds - data_seconds}


def per_iteration(result: dict) -> tuple[float, float, float]:
    """(total, data, network) seconds per iteration."""
    count = result["iterations"]
    data, network = result["data_seconds"] / count, result["network_seconds"] / count
    return data + network, data, network


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 4 Hippocampus, 2 HC18)")
    parser.add_argument("--iterations", type=int, default=None, help="timed steps (default 16 Hippocampus, 4 HC18)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="folder for preprocessed data and logs (default: a temporary one, removed)")
    add_datasets_root_argument(parser)
    add_nnunet_venv_argument(parser)
    args = parser.parse_args()
    require_datasets(args.datasets_root, args.datasets)
    require_nnunet(args.nnunet_venv)

    import torch

    from autoseg.utils.precision import resolve_precision

    default_precision = resolve_precision("auto", torch.device("cpu"))
    temporary = None if args.scratch else tempfile.TemporaryDirectory(prefix="train_speed_")
    scratch = (args.scratch or Path(temporary.name)).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for dataset in args.datasets:
            warmup, timed = DEFAULT_ITERATIONS[dataset]
            warmup, timed = args.warmup or warmup, args.iterations or timed
            print(f"{dataset} {CONFIGURATIONS[dataset]}: preparing both tools (not timed) ...", flush=True)
            nnunet = measure_nnunet(dataset, scratch=scratch, venv=args.nnunet_venv, warmup=warmup, timed=timed,
                                    datasets=args.datasets_root)
            plan = json.loads((prepare_autoseg(dataset, scratch=scratch, datasets=args.datasets_root)
                               / "plans.json").read_text())
            ours = plan["configurations"][CONFIGURATIONS[dataset]]
            print(f"  plans: nnU-Net patch {nnunet['patch_size']} batch {nnunet['batch_size']}; "
                  f"autoseg patch {ours.get('patch_size')} batch {ours.get('batch_size')}", flush=True)
            results = {"nnU-Net (float32)": nnunet}
            for precision in dict.fromkeys([default_precision, "float32"]):
                results[f"autoseg ({precision})"] = measure_autoseg(
                    dataset, scratch=scratch, warmup=warmup, timed=timed, batch_size=nnunet["batch_size"],
                    precision=precision, datasets=args.datasets_root,
                )
            reference = per_iteration(nnunet)[0]
            for label, result in results.items():
                total, data, network = per_iteration(result)
                rows.append((dataset, label, total, data, network, reference / total))
                print(f"  {label:<20} {total:7.2f} s/it (data {data:5.2f}, network {network:6.2f}), "
                      f"throughput x{reference / total:4.2f} of nnU-Net, load {load_average():.2f}", flush=True)
    finally:
        if temporary is not None:
            temporary.cleanup()
    print("\ndataset                 tool                  s/it   data  network  it/s ratio vs nnU-Net")
    for dataset, label, total, data, network, ratio in rows:
        print(f"{dataset:<23} {label:<20} {total:6.2f} {data:6.2f} {network:8.2f}  {ratio:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
