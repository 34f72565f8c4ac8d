"""On CPU, augment in line or in background workers? Seconds per training iteration of real configurations, both ways.

``autoseg.training.batch_workers.default_number_of_workers`` augments in line on CPU: the network's threads use every
core, so a background worker can only run by descheduling one of them while the others wait at the next barrier.
This script measures that choice: for each configuration (a few of ``benchmarks/throughput_model.py``'s, on the same
preprocessed subsets in its scratch folder), ``train_fold`` runs a warm-up epoch and two timed epochs with one
background worker per CPU, then the same in line, and reports ``train_seconds / iterations`` of the timed epochs and
their ratio. Run it on a quiet machine (about 4 minutes on 2 CPU cores).

Usage::

    python benchmarks/loader_workers.py [--iterations 15] [--scratch FOLDER] [--out RESULT_JSON]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput_model
import torch
from locations import add_datasets_root_argument, require_datasets, scratch_folder
from provenance import provenance

from autoseg.records.plans import load_plans
from autoseg.records.training_log import LOG_FILE
from autoseg.training.job import TrainingJob, TrainingSettings
from autoseg.training.loop import train_fold
from autoseg.utils.files import write_json
from autoseg.utils.precision import resolve_precision
from autoseg.utils.threads import available_cpus

CONFIGURATIONS = ("Hippocampus 3d_fullres batch 2", "Hippocampus 3d_fullres 5 stages 48x64x48 batch 2",
                  "HC18 2d 384x512 batch 2", "Hippocampus 2d (plan)")


def seconds_per_iteration(variant: throughput_model.Variant, dataset, work, workers: int, iterations: int,
                          scratch: Path, precision: str) -> float:
    configuration = variant.change(load_plans(work.plans).configuration(variant.configuration))
    identifiers = tuple(case.identifier for case in dataset.training_cases)
    fold_folder = scratch / "loader_workers" / f"{variant.name.replace(' ', '_')}_{workers}"
    shutil.rmtree(fold_folder, ignore_errors=True)
    job = TrainingJob(dataset=dataset, work_folder=work, configuration_name=variant.configuration,
                      configuration=configuration, fold=0, train_case_ids=identifiers[2:],
                      validation_case_ids=identifiers[:2], preprocessed_folder=work.preprocessed(variant.configuration),
                      fold_folder=fold_folder)
    settings = TrainingSettings(epochs=3, iterations_per_epoch=iterations, validation_iterations=0, device="cpu",
                                precision=precision, batch_size=variant.batch_size or configuration.batch_size,
                                num_workers=workers, after_training_hooks=(), show_progress_bar=False,
                                checkpoint_every_epochs=1000, checkpoint_every_seconds=1e9)
    train_fold(job, settings, log_message=lambda _message: None)
    records = [json.loads(line) for line in (fold_folder / LOG_FILE).read_text().splitlines() if line.strip()][1:]
    return sum(record["train_seconds"] for record in records) / sum(record["iterations"] for record in records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=15, help="per epoch (one warm-up epoch, two timed)")
    parser.add_argument("--scratch", type=Path, default=scratch_folder("throughput_model"),
                        help="benchmarks/throughput_model.py's scratch folder (shared: the same preprocessed subsets)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader_workers.json")
    add_datasets_root_argument(parser)
    args = parser.parse_args()
    variants = [variant for variant in throughput_model.VARIANTS if variant.name in CONFIGURATIONS]
    require_datasets(args.datasets_root, sorted({variant.dataset for variant in variants}))
    precision = resolve_precision("auto", torch.device("cpu"))
    workers = available_cpus()
    rows = []
    for variant in variants:
        dataset, work = throughput_model.prepare(variant.dataset, args.scratch.resolve(), 24,
                                                 [variant.configuration], args.datasets_root)
        background = seconds_per_iteration(variant, dataset, work, workers, args.iterations, args.scratch, precision)
        in_line = seconds_per_iteration(variant, dataset, work, 0, args.iterations, args.scratch, precision)
        rows.append({"configuration": variant.name, "background_workers": workers,
                     "seconds_per_iteration_background": round(background, 4),
                     "seconds_per_iteration_in_line": round(in_line, 4), "ratio": round(in_line / background, 3)})
        print(f"{variant.name}: {workers} workers {background:.3f} s/it, in line {in_line:.3f} s/it "
              f"({in_line / background:.2f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"provenance": provenance(), "command": "python benchmarks/loader_workers.py",
                          "precision": precision, "iterations_per_timed_epoch": args.iterations,
                          "configurations": rows})
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
