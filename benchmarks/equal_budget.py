"""Benchmark: autoseg and nnU-Net v2 trained on the same fold with the same budget; validation Dice of each.

Both tools train one fold of one dataset on this machine, one after the other (nnU-Net first: its trainer writes
``splits_final.json``, which autoseg then receives with ``--splits``, so both hold out exactly the same cases).
Two modes:

- **equal wall-clock** (default, ``--minutes 15``): each tool trains as its recipe does for that long. autoseg plans
  as ``autoseg run --time-budget`` would for that much training (``autoseg plan --time-budget``, its compute-aware
  plan: spacing, width, batch fitted to the measured machine; ``--memory-plan`` keeps the memory-fitted plan
  instead) and runs ``autoseg train --time-budget``; nnU-Net runs its own trainer with its own epochs (250 steps,
  then 50 validation steps), but through a subclass, written by this script into the scratch folder and run in
  nnU-Net's virtual environment, that sets the learning rate before every step to nnU-Net's poly rule stretched over
  the budget, ``0.01 * (1 - elapsed / budget) ** 0.9``, and stops when the budget is spent. autoseg keeps its own
  precision (``--precision``, default ``auto``) and batch (capped on CPU); nnU-Net computes in float32 on a CPU.
- **equal iterations** (``--iterations N``): both take exactly N optimiser steps with the same poly rule over steps,
  both in float32, with nnU-Net's batch size (autoseg's ``--batch-size``) and the same patch size (checked: the
  benchmark stops if the two plans' patches differ), and no validation steps during training. This asks whether
  autoseg's recipe learns as much per step as the reference's.

"Seconds" are training time as each tool's clock counts it: from the first step (data loaders already started) to
the end of training, validation steps during training included; setting up and predicting the validation cases are
not, and are shown separately as each run's whole wall time. Afterwards both tools predict their validation cases
in their own way (final weights, sliding window with mirroring), and this script scores both folders with the same
code, autoseg's ``evaluate_folders``, against the raw labels of the dataset (with ``--validation-cases N``, on the
fold's first N validation cases only: nnU-Net then predicts only those, autoseg still predicts all). nnU-Net runs
on the CPU (``nnUNetv2_train -device cpu``'s thread setting), so autoseg is run on the CPU too.

Usage (nnU-Net installed by ``../shared/tools/nnunet-peer/setup.sh``, relative to the project root; preprocessing
both tools, once per scratch folder, takes a few minutes on 2 cores):

    python benchmarks/equal_budget.py [--dataset Dataset004_Hippocampus] [--fold 0] [--minutes 15]
    python benchmarks/equal_budget.py --iterations 300
    python benchmarks/equal_budget.py --dataset Dataset018_HC18 --minutes 15 --validation-cases 20

The shared datasets and nnU-Net's virtualenv default to ``$AUTOSEG_TEST_DATA`` (else ``../shared/datasets``) and
``$NNUNET_PEER_VENV`` (else the setup script's default), or ``--datasets-root`` / ``--nnunet-venv``; the scratch
folder (``--scratch``) to ``equal_budget`` in the system's temporary folder. The table is printed and written as
JSON to ``--out`` (default ``benchmarks/results/equal_budget_<dataset>_<mode>.json``); the folders it names are
written as ``benchmarks/locations.py``'s ``path_for_result`` does: the scratch folder's name followed by the path
inside it, never a folder of one machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

from locations import (
    REPOSITORY,
    add_datasets_root_argument,
    add_nnunet_venv_argument,
    path_for_result,
    require_datasets,
    scratch_folder,
)
from nnunet_peer import (
    SHARED_DATASETS,
    load_average,
    nnunet_environment,
    prepare_nnunet,
    require_nnunet,
    run_quietly,
)
from provenance import provenance
from train_speed import CONFIGURATIONS, prepare_autoseg

from autoseg.evaluation.folders import evaluate_folders
from autoseg.evaluation.targets import targets_from_dataset_json
from autoseg.pipeline.budget import whole_run_seconds
from autoseg.records.plans import load_plans
from autoseg.utils.files import write_json

TRAINER_NAME = "nnUNetTrainerEqualBudget"
TRAINER_FILE = "nnunet_equal_budget_trainer.py"

# Written into the scratch folder and run with nnU-Net's Python; never part of autoseg. nnU-Net's own run_training
# loop, except that the learning rate is set before every step from the share of the budget already spent and the
# loop stops when the budget is spent (a started epoch that the budget cuts short is not validated).
NNUNET_TRAINER_SOURCE = '''"""nnU-Net v2's trainer with its poly learning rate stretched over a budget of time or steps.

Written by autoseg's benchmarks/equal_budget.py; runs in nnU-Net's virtual environment. Usage:
    python nnunet_equal_budget_trainer.py PREPROCESSED CONFIGURATION FOLD seconds|iterations AMOUNT RESULT_JSON [N]
N (optional): after training, predict only the fold's first N validation cases.
"""
import json
import multiprocessing
import os
import sys
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class BudgetPolyLR:
    """Stands in for nnU-Net's PolyLRScheduler: the rate follows the share of the budget spent, not the epoch."""

    def __init__(self, trainer):
        self.trainer = trainer

    def step(self, epoch=None):
        self.trainer.set_poly_learning_rate()


class nnUNetTrainerEqualBudget(nnUNetTrainer):
    budget_kind = "seconds"  # or "iterations"
    budget_amount = 900.0
    poly_exponent = 0.9  # nnU-Net's PolyLRScheduler

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, BudgetPolyLR(self)  # so that the rate nnU-Net logs at an epoch's start is the one in use

    def progress(self):
        if self.budget_kind == "seconds":
            return (time.monotonic() - self.training_started) / self.budget_amount
        return self.iterations_done / self.budget_amount

    def set_poly_learning_rate(self):
        learning_rate = self.initial_lr * (1 - min(1.0, self.progress())) ** self.poly_exponent
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def run_training(self):
        self.on_train_start()
        self.training_started, self.iterations_done = time.monotonic(), 0
        validate = self.budget_kind == "seconds"  # equal iterations: no validation steps during training
        while self.progress() < 1:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if self.progress() >= 1:
                    break
                self.lr_scheduler.step()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += 1
            self.on_train_epoch_end(train_outputs)
            if validate and self.progress() < 1:
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val_outputs = [self.validation_step(next(self.dataloader_val))
                                   for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val_outputs)
                self.on_epoch_end()
            else:
                self.current_epoch += 1
        self.training_seconds = time.monotonic() - self.training_started
        self.on_train_end()


def main():
    preprocessed, configuration, fold, kind, amount, result_path = sys.argv[1:7]
    validation_limit = int(sys.argv[7]) if len(sys.argv) > 7 else None
    torch.set_num_threads(multiprocessing.cpu_count())  # what nnUNetv2_train -device cpu does
    nnUNetTrainerEqualBudget.budget_kind = kind
    nnUNetTrainerEqualBudget.budget_amount = float(amount)
    plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnUNetv2_train's get_trainer_from_args adds for a fresh run
    dataset_json = load_json(os.path.join(preprocessed, "dataset.json"))
    trainer = nnUNetTrainerEqualBudget(plans, configuration, int(fold), dataset_json, device=torch.device("cpu"))
    trainer.run_training()
    training_cases, validation_cases = trainer.do_split()
    if validation_limit is not None:  # training is over: only the validation prediction sees the shorter list
        validation_cases = validation_cases[:validation_limit]
        trainer.do_split = lambda: (training_cases, validation_cases)
    trainer.perform_actual_validation(False)  # what nnUNetv2_train does next
    with open(result_path, "w") as handle:
        json.dump({
            "iterations": trainer.iterations_done,
            "training_seconds": trainer.training_seconds,
            "epochs": trainer.current_epoch,
            "batch_size": trainer.batch_size,
            "patch_size": list(trainer.configuration_manager.patch_size),
            "validation_folder": os.path.join(trainer.output_folder, "validation"),
            "validation_cases": list(validation_cases),
            "splits_file": os.path.join(trainer.preprocessed_dataset_folder_base, "splits_final.json"),
        }, handle)


if __name__ == "__main__":
    main()
'''

# autoseg train says: "device: cpu, bfloat16 arithmetic, batch 7 ..."
AUTOSEG_SETUP_LINE = re.compile(r"device: (?P<device>\S+), (?P<precision>\w+) arithmetic, batch (?P<batch>\d+)")


def train_nnunet(dataset: str, configuration: str, fold: int, *, budget: tuple[str, float], scratch: Path,
                 venv: Path, validation_cases: int | None = None, datasets: Path = SHARED_DATASETS) -> dict:
    """nnU-Net's trainer (the budget subclass) on one fold from scratch, then its validation prediction (of the
    fold's first ``validation_cases`` cases only, when given)."""
    preprocessed = prepare_nnunet(dataset, scratch=scratch, venv=venv, configurations=(configuration,),
                                  datasets=datasets)
    trainer_file = scratch / TRAINER_FILE
    trainer_file.write_text(NNUNET_TRAINER_SOURCE)
    output = scratch / "nnUNet_results" / dataset / f"{TRAINER_NAME}__nnUNetPlans__{configuration}" / f"fold_{fold}"
    shutil.rmtree(output, ignore_errors=True)  # a fresh run, not a resumed one
    result_path = scratch / f"nnunet_equal_budget_{dataset}.json"
    result_path.unlink(missing_ok=True)
    kind, amount = budget
    command = [str(venv / "bin" / "python"), str(trainer_file), str(preprocessed), configuration, str(fold), kind,
               str(amount), str(result_path), *([str(validation_cases)] if validation_cases is not None else [])]
    started = time.monotonic()
    run_quietly(command, log=scratch / f"nnunet_equal_budget_{dataset}.log",
                environment=nnunet_environment(scratch=scratch, venv=venv))
    result = json.loads(result_path.read_text())
    return {**result, "precision": "float32", "wall_seconds": time.monotonic() - started}


def autoseg_budget_arguments(budget: tuple[str, float], *, batch_size: int | None, precision: str) -> list[str]:
    """``autoseg train`` options for the budget: a time budget, or one epoch of N steps without validation steps."""
    kind, amount = budget
    if kind == "seconds":
        arguments = ["--time-budget", f"{amount:g}s", "--precision", precision]
    else:
        arguments = ["--epochs", "1", "--iterations-per-epoch", str(int(amount)), "--validation-iterations", "0",
                     "--precision", "float32"]
    return arguments + (["--batch-size", str(batch_size)] if batch_size is not None else [])


def prepare_autoseg_for_budget(dataset: str, configuration: str, *, scratch: Path, training_seconds: float,
                               datasets: Path = SHARED_DATASETS) -> Path:
    """autoseg's compute-aware plan for ``training_seconds`` of training on this machine, preprocessed (once).

    ``autoseg plan --time-budget T`` fits the plans to the training share of a whole run of T, so T is chosen to
    leave exactly ``training_seconds`` to training."""
    work = scratch / f"autoseg_work_budget_{training_seconds:g}s"
    folder = work / dataset
    if not (folder / "preprocessed" / configuration).is_dir():
        whole_run = whole_run_seconds(training_seconds)
        for stage in (["plan", str(datasets / dataset), "--time-budget", f"{whole_run:.0f}s", "--device", "cpu"],
                      ["preprocess", str(datasets / dataset), "-c", configuration]):
            run_quietly([sys.executable, "-m", "autoseg", *stage, "--work-dir", str(work)],
                        log=scratch / f"autoseg_{stage[0]}_budget_{dataset}.log")
    return folder


def train_autoseg(dataset: str, configuration: str, fold: int, *, budget: tuple[str, float], splits: Path,
                  scratch: Path, batch_size: int | None, precision: str, memory_plan: bool = False,
                  datasets: Path = SHARED_DATASETS) -> dict:
    """``autoseg train`` on the fold of ``splits`` from scratch, with its validation prediction."""
    if budget[0] == "seconds" and not memory_plan:
        folder = prepare_autoseg_for_budget(dataset, configuration, scratch=scratch, training_seconds=budget[1],
                                            datasets=datasets)
    else:
        folder = prepare_autoseg(dataset, scratch=scratch, datasets=datasets)
    fold_folder = folder / "models" / configuration / f"fold_{fold}"
    shutil.rmtree(fold_folder, ignore_errors=True)  # a fresh run, not a resumed one
    log = scratch / f"autoseg_equal_budget_{dataset}.log"
    command = [sys.executable, "-m", "autoseg", "train", str(datasets / dataset), configuration, str(fold),
               "--work-dir", str(folder.parent), "--splits", str(splits), "--device", "cpu",
               *autoseg_budget_arguments(budget, batch_size=batch_size, precision=precision)]
    started = time.monotonic()
    run_quietly(command, log=log)
    wall_seconds = time.monotonic() - started
    summary = json.loads((fold_folder / "training_summary.json").read_text())
    setup = AUTOSEG_SETUP_LINE.search(log.read_text())
    plan = load_plans(folder / "plans.json").configurations[configuration]
    return {
        "iterations": summary["iterations_done"],
        "training_seconds": summary["elapsed_seconds"],
        "epochs": summary["epochs_completed"],
        "batch_size": int(setup["batch"]) if setup else None,
        "patch_size": list(plan.patch_size),
        "features": list(plan.network.features_per_stage),
        "spacing": list(plan.spacing),
        "precision": setup["precision"] if setup else None,
        "validation_folder": str(fold_folder / "validation"),
        "wall_seconds": wall_seconds,
    }


def validation_dice(dataset: str, prediction_folder: str, cases: list[str], *,
                    datasets: Path = SHARED_DATASETS) -> dict:
    """Dice per class (mean over the cases) and the foreground mean, scored by autoseg against the raw labels."""
    raw = datasets / dataset
    targets, ignore_label = targets_from_dataset_json(raw / "dataset.json")
    summary = evaluate_folders(prediction_folder, raw / "labelsTr", targets=targets, ignore_label=ignore_label,
                               cases=cases, with_surface_metrics=False)
    per_class = summary.dice_per_class
    return {"dice": per_class, "mean_dice": summary.foreground_dice}


def check_equal_step(dataset: str, configuration: str, *, scratch: Path, venv: Path,
                     datasets: Path = SHARED_DATASETS) -> int:
    """nnU-Net's batch size, after checking that both plans train on the same patch size (equal-iterations mode)."""
    nnunet_folder = prepare_nnunet(dataset, scratch=scratch, venv=venv, datasets=datasets)
    reference = json.loads((nnunet_folder / "nnUNetPlans.json").read_text())["configurations"][configuration]
    autoseg_folder = prepare_autoseg(dataset, scratch=scratch, datasets=datasets)
    ours = load_plans(autoseg_folder / "plans.json").configurations[configuration]
    if list(ours.patch_size) != list(reference["patch_size"]):
        sys.exit(f"{dataset} {configuration}: autoseg's patch {list(ours.patch_size)} differs from nnU-Net's "
                 f"{reference['patch_size']}; equal iterations would compare different steps")
    return int(reference["batch_size"])


def differences(ours: dict, reference: dict) -> dict:
    """autoseg minus nnU-Net: Dice per class and mean, iterations, seconds."""
    dice = {name: (value - reference["dice"][name] if None not in (value, reference["dice"].get(name)) else None)
            for name, value in ours["dice"].items()}
    mean = None if None in (ours["mean_dice"], reference["mean_dice"]) else ours["mean_dice"] - reference["mean_dice"]
    return {"dice": dice, "mean_dice": mean, "iterations": ours["iterations"] - reference["iterations"],
            "training_seconds": ours["training_seconds"] - reference["training_seconds"]}


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: dict[str, dict], difference: dict) -> None:
    names = list(results["autoseg"]["dice"])
    print(f"\n{'tool':<10} {'iters':>6} {'train s':>8} {'wall s':>7} {'batch':>5} {'precision':>9}  "
          + " ".join(f"{name:>10}" for name in names) + f" {'mean':>8}")
    for tool, result in results.items():
        print(f"{tool:<10} {result['iterations']:>6} {result['training_seconds']:>8.0f} {result['wall_seconds']:>7.0f} "
              f"{result['batch_size'] or '-':>5} {result['precision'] or '-':>9}  "
              + " ".join(f"{number(result['dice'][name]):>10}" for name in names)
              + f" {number(result['mean_dice']):>8}")
    if "features" in results["autoseg"]:
        plan = results["autoseg"]
        print(f"autoseg's plan: patch {plan['patch_size']}, spacing {plan['spacing']}, features {plan['features']}")
    print(f"{'difference':<10} {difference['iterations']:>+6} {difference['training_seconds']:>+8.0f} {'':>7} {'':>5} "
          f"{'':>9}  " + " ".join(f"{number(difference['dice'][name]):>10}" for name in names)
          + f" {number(difference['mean_dice']):>8}   (autoseg - nnU-Net)")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="Dataset004_Hippocampus", choices=list(CONFIGURATIONS))
    parser.add_argument("--configuration", default=None, help="default: 3d_fullres for Hippocampus, 2d for HC18")
    parser.add_argument("--fold", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=15.0, help="equal wall-clock budget per tool (default 15)")
    budget.add_argument("--iterations", type=int, default=None, help="equal iterations instead, both in float32")
    parser.add_argument("--precision", default="auto",
                        help="autoseg's precision at equal wall-clock (default auto; equal iterations: float32)")
    parser.add_argument("--scratch", type=Path, default=scratch_folder("equal_budget"),
                        help="preprocessed data, models and logs of both tools (kept: preprocessing is reused; "
                             "default: equal_budget in the system's temporary folder)")
    add_datasets_root_argument(parser)
    add_nnunet_venv_argument(parser)
    parser.add_argument("--validation-cases", type=int, default=None,
                        help="score both tools on the fold's first N validation cases only (nnU-Net predicts only "
                             "those; on 2 cores its HC18 prediction of all 60 takes longer than its training)")
    parser.add_argument("--memory-plan", action="store_true",
                        help="equal wall-clock: train autoseg's memory-fitted plan, not its plan for the budget")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result (default benchmarks/results/equal_budget_<dataset>_<mode>.json)")
    args = parser.parse_args()
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.validation_cases is not None and args.validation_cases < 1:
        parser.error("--validation-cases must be at least 1")
    if args.iterations is None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.configuration = args.configuration or CONFIGURATIONS[args.dataset]
    return args


def main() -> int:
    args = parse_arguments()
    require_datasets(args.datasets_root, [args.dataset])
    require_nnunet(args.nnunet_venv)
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    mode = "wall_clock" if args.iterations is None else "iterations"
    budget = ("seconds", args.minutes * 60) if args.iterations is None else ("iterations", float(args.iterations))
    print(f"{args.dataset} {args.configuration} fold {args.fold}, equal {mode.replace('_', '-')}: "
          f"{budget[1]:g} {budget[0]} each; preparing both tools (not timed) ...", flush=True)
    batch_size = None
    if mode == "iterations":
        batch_size = check_equal_step(args.dataset, args.configuration, scratch=scratch, venv=args.nnunet_venv,
                                      datasets=args.datasets_root)
    print(f"  nnU-Net training ... (load {load_average():.2f})", flush=True)
    nnunet = train_nnunet(args.dataset, args.configuration, args.fold, budget=budget, scratch=scratch,
                          venv=args.nnunet_venv, validation_cases=args.validation_cases, datasets=args.datasets_root)
    print(f"  autoseg training ... (load {load_average():.2f})", flush=True)
    autoseg = train_autoseg(args.dataset, args.configuration, args.fold, budget=budget,
                            splits=Path(nnunet["splits_file"]), scratch=scratch, batch_size=batch_size,
                            precision=args.precision, memory_plan=args.memory_plan, datasets=args.datasets_root)
    results = {"autoseg": autoseg, "nnU-Net": nnunet}
    for result in results.values():
        result.update(validation_dice(args.dataset, result["validation_folder"], nnunet["validation_cases"],
                                      datasets=args.datasets_root))
    difference = differences(autoseg, nnunet)
    print_table(results, difference)
    for result in results.values():  # the folders as the result file names them, after every use of them here
        for key in ("validation_folder", "splits_file"):
            if key in result:
                result[key] = path_for_result(result[key], scratch=scratch)
    out = args.out or REPOSITORY / "benchmarks" / "results" / f"equal_budget_{args.dataset}_{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {
        "provenance": provenance(),
        "dataset": args.dataset, "configuration": args.configuration, "fold": args.fold, "mode": mode,
        "budget": {budget[0]: budget[1]}, "validation_cases": nnunet["validation_cases"],
        "results": results, "difference_autoseg_minus_nnunet": difference, "load_average_at_end": load_average(),
    })
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
