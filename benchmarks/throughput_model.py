"""Validate the throughput model: predicted against measured seconds per training iteration of real configurations.

The model (``autoseg.planning.step_cost``) is measured on this machine with its probe networks
(``autoseg.pipeline.machine_benchmark.measure_throughput``).
Then, for each configuration below (Hippocampus 3d_fullres and
2d and HC18 2d as planned, and variants: other batch sizes, smaller and larger patches, the residual-encoder preset,
5 instead of 4 stages) and for every configuration that ``autoseg plan --time-budget`` 15m and 1h train for each
dataset on this machine (planned when the script runs, with the machine's cached model: the plans move with the
model), real training iterations run through
``autoseg.training.loop.train_fold``, the loop ``autoseg train`` uses, with the configuration's real loader
(augmenting as the device's default: in line on CPU) on real preprocessed data: both shared datasets are planned in
full and a subset of their cases is preprocessed into a scratch working folder. The first epoch warms up (memory
maps opened, kernels chosen) and is not counted; the measured seconds per iteration are
``train_seconds / iterations`` of the other epochs of the fold's ``log.jsonl``.

The table gives per configuration the batch actually trained (on CPU the loop caps the plan's batch), the FLOPs of a
step, the predicted and measured seconds per iteration and their ratio, and the FLOP/s the real step achieved as a
fraction of the dense-convolution rate measured with the probes; the same, with the model, its probes and each
step's counted work, goes to ``--out`` as JSON. Exit status 1 when fewer than 80 % of the configurations are
predicted within 20 %. About 7-10 minutes on 2 CPU cores; run it on a quiet machine (the measurement and the
training it is compared with must see the same CPUs). ``--quick`` trains 2 configurations for 2 iterations, to
check the script.

Usage::

    python benchmarks/throughput_model.py [--quick] [--scratch FOLDER] [--cached-model] [--out F]
    python benchmarks/throughput_model.py --refit F [--exclude-probe NAME ...]   # another probe set, offline

The shared datasets are read from ``--datasets-root`` (default ``$AUTOSEG_TEST_DATA``, else ``../shared/datasets``
beside the project root); the scratch folder defaults to ``throughput_model`` in the system's temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

import torch  # noqa: E402
from locations import add_datasets_root_argument, require_datasets, scratch_folder  # noqa: E402
from provenance import provenance  # noqa: E402

from autoseg.data.raw_folder import load_raw_dataset  # noqa: E402
from autoseg.pipeline.budget import RunBudget  # noqa: E402
from autoseg.pipeline.machine_benchmark import machine_throughput, measure_throughput  # noqa: E402
from autoseg.pipeline.plan_dataset import plan_dataset  # noqa: E402
from autoseg.planning.presets import PRESETS  # noqa: E402
from autoseg.planning.step_cost import StepWork, ThroughputModel, fit_throughput_model, step_work  # noqa: E402
from autoseg.preprocessing.preprocess_dataset import preprocess_dataset  # noqa: E402
from autoseg.records.dataset import RawDataset  # noqa: E402
from autoseg.records.plans import Configuration, load_plans  # noqa: E402
from autoseg.records.training_log import LOG_FILE  # noqa: E402
from autoseg.records.work_folder import WorkFolder  # noqa: E402
from autoseg.training.job import TrainingJob, TrainingSettings  # noqa: E402
from autoseg.training.loop import train_fold  # noqa: E402
from autoseg.training.step import training_batch_size  # noqa: E402
from autoseg.utils.devices import choose_device  # noqa: E402
from autoseg.utils.files import read_json, write_json  # noqa: E402
from autoseg.utils.precision import resolve_precision  # noqa: E402
from autoseg.utils.threads import available_cpus  # noqa: E402

HIPPOCAMPUS, HC18 = "Dataset004_Hippocampus", "Dataset018_HC18"
TOLERANCE = 0.20
REQUIRED_SHARE = 0.8  # of the configurations predicted within TOLERANCE (12 of 15: the goal in docs/planning.md)
TIMED_SECONDS = 25.0  # per configuration, predicted; at least MINIMUM_ITERATIONS timed iterations
EPOCH_SECONDS = 8.0  # iterations per epoch: as many as fit in this (predicted), so per-epoch pauses stay rare
MINIMUM_ITERATIONS, MAXIMUM_ITERATIONS = 2, 12


def residual_encoder(configuration: Configuration) -> Configuration:
    """The same stages with the resenc-m preset's residual blocks (1, 3, 4, 6...) and one decoder convolution."""
    preset = PRESETS["resenc-m"]
    stages = configuration.network.number_of_stages
    network = {**configuration.network.to_json(), "architecture": preset.architecture,
               "blocks_per_stage_encoder": preset.encoder_blocks(stages),
               "convs_per_stage_decoder": [preset.decoder_convolutions_per_stage] * (stages - 1)}
    return configuration.replace(network=network)


def stages(count: int, patch_size: tuple[int, ...]) -> Callable[[Configuration], Configuration]:
    """The plan's network cut or extended to ``count`` stages (32 features doubling, capped as the planner caps)."""

    def change(configuration: Configuration) -> Configuration:
        dimension = configuration.dimension
        cap = 320 if dimension == 3 else 512
        network = {
            **configuration.network.to_json(),
            "features_per_stage": [min(cap, 32 * 2**stage) for stage in range(count)],
            "kernel_sizes": [[3] * dimension for _ in range(count)],
            "strides": [[1] * dimension] + [[2] * dimension for _ in range(count - 1)],
            "blocks_per_stage_encoder": [2] * count,
            "convs_per_stage_decoder": [2] * (count - 1),
        }
        return configuration.replace(network=network, patch_size=patch_size)

    return change


def patch(patch_size: tuple[int, ...]) -> Callable[[Configuration], Configuration]:
    return lambda configuration: configuration.replace(patch_size=patch_size)


def as_planned(configuration: Configuration) -> Configuration:
    return configuration


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    dataset: str
    configuration: str
    change: Callable[[Configuration], Configuration] = as_planned
    batch_size: int | None = None  # None: what `autoseg train` trains (the plan's batch, capped on CPU)


VARIANTS = (
    Variant("Hippocampus 3d_fullres (plan)", HIPPOCAMPUS, "3d_fullres"),
    Variant("Hippocampus 3d_fullres batch 2", HIPPOCAMPUS, "3d_fullres", batch_size=2),
    Variant("Hippocampus 3d_fullres 32^3 batch 4", HIPPOCAMPUS, "3d_fullres", patch((32, 32, 32)), 4),
    Variant("Hippocampus 3d_fullres 56x64x56 batch 2", HIPPOCAMPUS, "3d_fullres", patch((56, 64, 56)), 2),
    Variant("Hippocampus 3d_fullres resenc-m", HIPPOCAMPUS, "3d_fullres", residual_encoder),
    Variant("Hippocampus 3d_fullres 5 stages 48x64x48 batch 2", HIPPOCAMPUS, "3d_fullres",
            stages(5, (48, 64, 48)), 2),
    Variant("Hippocampus 2d (plan)", HIPPOCAMPUS, "2d"),
    Variant("Hippocampus 2d resenc-m batch 128", HIPPOCAMPUS, "2d", residual_encoder, 128),
    Variant("HC18 2d (plan)", HC18, "2d"),
    Variant("HC18 2d 384x512 batch 2", HC18, "2d", patch((384, 512)), 2),
    Variant("HC18 2d 5 stages 256x256 batch 8", HC18, "2d", stages(5, (256, 256)), 8),
)
QUICK_VARIANTS = ("Hippocampus 3d_fullres batch 2", "Hippocampus 2d (plan)")
BUDGETS = ("15m", "1h")  # the budgets whose planned configurations are measured too


def planned_with_budgets(dataset_name: str, scratch: Path, datasets: Path, device: torch.device,
                         precision: str) -> list[Variant]:
    """The configurations ``autoseg plan DATASET --time-budget B`` trains, for each of ``BUDGETS``, as variants of
    the memory-fitted plan's configuration (its network, patch and batch; trained on the full-resolution data,
    since a step's time depends on the patch, not on the spacing the data were resampled to)."""
    root = datasets / dataset_name
    label = dataset_name.split("_", 1)[-1]
    variants, seen = [], set()
    for budget in BUDGETS:
        work = WorkFolder.for_dataset(scratch / f"plan_{budget}", root)
        compute_for = RunBudget.start(budget).compute_for(device, precision, say=lambda _message: None)
        print(f"planning {dataset_name} for a {budget} budget ...", flush=True)
        _, plans, _ = plan_dataset(root, work, workers=available_cpus(), progress=False, compute_for=compute_for)
        for name in plans.compute.configurations:
            planned = plans.configuration(name)
            key = (name, json.dumps(planned.network.to_json(), sort_keys=True), tuple(planned.patch_size),
                   planned.batch_size)
            if key in seen:
                continue
            seen.add(key)
            features = planned.network.features_per_stage[0]
            variants.append(Variant(
                f"{label} {name} {features} features batch {planned.batch_size} ({budget} plan)", dataset_name,
                name, _planned_network(planned), planned.batch_size,
            ))
    return variants


def _planned_network(planned: Configuration) -> Callable[[Configuration], Configuration]:
    return lambda configuration: configuration.replace(network=planned.network.to_json(),
                                                       patch_size=planned.patch_size)


def prepare(dataset_name: str, scratch: Path, cases: int, configurations: list[str],
            datasets: Path) -> tuple[RawDataset, WorkFolder]:
    """Plan the whole dataset (plans as `autoseg plan` makes them) and preprocess the first ``cases`` cases."""
    root = datasets / dataset_name
    work = WorkFolder.for_dataset(scratch / "work", root)
    if not work.plans.is_file():
        print(f"planning {dataset_name} ...", flush=True)
        plan_dataset(root, work, workers=available_cpus(), progress=False)
    dataset = load_raw_dataset(root)
    subset = dataclasses.replace(dataset, training_cases=dataset.training_cases[:cases], num_training=cases)
    print(f"preprocessing {cases} cases of {dataset_name} for {', '.join(configurations)} ...", flush=True)
    preprocess_dataset(subset, plans=load_plans(work.plans), work_folder=work, configuration_names=configurations,
                       workers=available_cpus(), show_progress=False)
    return subset, work


def iterations_for(predicted_seconds: float, quick: bool) -> tuple[int, int]:
    """(timed iterations, iterations per epoch) for a configuration predicted to take ``predicted_seconds``."""
    if quick:
        return MINIMUM_ITERATIONS, MINIMUM_ITERATIONS
    timed = min(MAXIMUM_ITERATIONS, max(MINIMUM_ITERATIONS, round(TIMED_SECONDS / predicted_seconds)))
    per_epoch = max(1, min(timed, round(EPOCH_SECONDS / predicted_seconds)))
    return timed, per_epoch


def measure_variant(
    variant: Variant, dataset: RawDataset, work: WorkFolder, model: ThroughputModel, device: torch.device,
    precision: str, scratch: Path, quick: bool,
) -> dict:
    """Predict, then train the variant for a warm-up epoch and enough timed iterations, and read the log."""
    configuration = variant.change(load_plans(work.plans).configuration(variant.configuration))
    batch = training_batch_size(configuration, variant.batch_size, device)
    work_done = step_work(configuration, batch_size=batch, in_channels=dataset.num_channels,
                          out_channels=dataset.num_output_channels, precision=model.key["precision"])
    predicted = model.seconds_per_iteration(work_done)
    timed, per_epoch = iterations_for(predicted, quick)
    case_ids = tuple(case.identifier for case in dataset.training_cases)
    fold_folder = scratch / "models" / variant.name.replace(" ", "_").replace("^", "")
    shutil.rmtree(fold_folder, ignore_errors=True)
    job = TrainingJob(
        dataset=dataset, work_folder=work, configuration_name=variant.configuration, configuration=configuration,
        fold=0, train_case_ids=case_ids[2:], validation_case_ids=case_ids[:2],
        preprocessed_folder=work.preprocessed(variant.configuration), fold_folder=fold_folder,
    )
    settings = TrainingSettings(
        epochs=1 + math.ceil(timed / per_epoch), iterations_per_epoch=per_epoch, validation_iterations=0,
        device=str(device), precision=precision, batch_size=batch, after_training_hooks=(),
        show_progress_bar=False, checkpoint_every_epochs=1000, checkpoint_every_seconds=1e9,
    )
    print(f"{variant.name}: batch {batch}, {work_done.gflop:.0f} GFLOP/step, predicted {predicted:.2f} s/it; "
          f"training 1 + {settings.epochs - 1} epochs of {per_epoch} iterations ...", flush=True)
    train_fold(job, settings, log_message=lambda _message: None)
    records = [json.loads(line) for line in (fold_folder / LOG_FILE).read_text().splitlines() if line.strip()][1:]
    iterations = sum(record["iterations"] for record in records)
    measured = sum(record["train_seconds"] for record in records) / iterations
    data_wait = sum(record["data_wait_seconds"] for record in records) / iterations
    peak = model.peak_conv_flops_per_second[str(configuration.dimension)]
    return {"name": variant.name, "batch": batch, "gflop": work_done.gflop, "predicted": predicted,
            "predicted_step": model.step_seconds(work_done), "predicted_data": model.data_seconds(work_done),
            "measured": measured, "data_wait": data_wait, "ratio": predicted / measured,
            "achieved_gflops": work_done.flops / measured / 1e9, "fraction_of_peak": work_done.flops / measured / peak,
            "work": dataclasses.asdict(work_done)}


def print_model(model: ThroughputModel) -> None:
    print(f"\nthroughput model ({model.measurement_seconds:.0f} s to measure), key {json.dumps(model.key)}")
    for dimension, coefficients in model.step_coefficients.items():
        data = model.data_coefficients[dimension]
        print(f"  {dimension}D step: " + ", ".join(f"{term} {value:.4g}" for term, value in coefficients.items())
              + "; data: " + ", ".join(f"{term} {value:.4g}" for term, value in data.items())
              + f"; dense convolution {model.peak_conv_flops_per_second[dimension] / 1e9:.0f} GFLOP/s")
    for probe in model.probes:
        fitted = model.step_seconds(probe.work)
        print(f"  probe {probe.name:<30} {probe.work.gflop:6.0f} GFLOP  step {probe.step_seconds:6.3f} s "
              f"(fit {fitted:6.3f}, {fitted / probe.step_seconds:4.2f})  data {probe.data_seconds:6.3f} s")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'configuration':<50} {'batch':>5} {'GFLOP':>7} {'pred s/it':>9} {'meas s/it':>9} {'ratio':>6} "
          f"{'data wait':>9} {'GFLOP/s':>8} {'of peak':>7}")
    for row in rows:
        print(f"{row['name']:<50} {row['batch']:>5} {row['gflop']:>7.0f} {row['predicted']:>9.2f} "
              f"{row['measured']:>9.2f} {row['ratio']:>6.2f} {row['data_wait']:>9.3f} {row['achieved_gflops']:>8.0f} "
              f"{row['fraction_of_peak']:>7.0%}")


def within_tolerance(rows: list[dict]) -> int:
    return sum(abs(row["ratio"] - 1) <= TOLERANCE for row in rows)


def exit_status(rows: list[dict]) -> int:
    """1 when fewer than ``REQUIRED_SHARE`` of the configurations are predicted within tolerance."""
    return 1 if within_tolerance(rows) < math.ceil(REQUIRED_SHARE * len(rows)) else 0


def refit(result_path: Path, excluded_probes: list[str]) -> int:
    """Refit the model of a saved run (``--out``) on its probes minus ``excluded_probes`` and predict its
    configurations again from their counted work: how another probe set would have done, without measuring."""
    result = read_json(result_path)
    measured = ThroughputModel.from_json(result["model"])
    unknown = set(excluded_probes) - {probe.name for probe in measured.probes}
    if unknown:
        raise SystemExit(f"{result_path} has no probe named {', '.join(sorted(unknown))}")
    # Measured once per machine, the same in every dimension's coefficients.
    fresh_pages = next(iter(measured.step_coefficients.values()))["seconds_per_gigabyte_fresh_pages"]
    model = fit_throughput_model(
        [probe for probe in measured.probes if probe.name not in excluded_probes], key=measured.key,
        data_overlaps_step=measured.data_overlaps_step, data_workers=measured.data_workers,
        peak_conv_flops_per_second=measured.peak_conv_flops_per_second,
        fresh_page_seconds_per_gigabyte=fresh_pages, measurement_seconds=measured.measurement_seconds,
        busy_cpus_of_others=measured.busy_cpus_of_others,
    )
    print_model(model)
    rows = []
    for row in result["configurations"]:
        predicted = model.seconds_per_iteration(StepWork(**row["work"]))
        rows.append({**row, "predicted": predicted, "ratio": predicted / row["measured"]})
    print_table(rows)
    print(f"\nrefitted on {len(model.probes)} of {len(measured.probes)} probes: {within_tolerance(rows)} of "
          f"{len(rows)} configurations within {TOLERANCE:.0%}")
    return exit_status(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_VARIANTS)}, 2 iterations")
    parser.add_argument("--scratch", type=Path, default=scratch_folder("throughput_model"),
                        help="working folder for plans, preprocessed subsets and training runs (kept for reruns; "
                             "default: throughput_model in the system's temporary folder)")
    add_datasets_root_argument(parser)
    parser.add_argument("--cases", type=int, default=None, help="cases preprocessed per dataset (default 24; 8 quick)")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: the best available)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON of the model (its probes) and every configuration's counted work, predicted and "
                             "measured seconds (default benchmarks/results/throughput_model_<device>.json; "
                             "not written with --quick)")
    parser.add_argument("--cached-model", action="store_true",
                        help="reuse this machine's cached model (~/.cache/autoseg/throughput) instead of measuring")
    parser.add_argument("--refit", type=Path, default=None, metavar="RESULT_JSON",
                        help="measure nothing: refit the model of a saved run (its --out) and predict again")
    parser.add_argument("--exclude-probe", action="append", default=[], metavar="NAME",
                        help="with --refit: leave this probe out of the fit (repeatable)")
    args = parser.parse_args()
    if args.refit is not None:
        return refit(args.refit, args.exclude_probe)
    started = time.perf_counter()
    device = choose_device(args.device)
    precision = resolve_precision(args.precision, device)
    variants = [variant for variant in VARIANTS if not args.quick or variant.name in QUICK_VARIANTS]
    cases = args.cases or (8 if args.quick else 24)
    scratch = args.scratch.resolve()
    dataset_names = list(dict.fromkeys(variant.dataset for variant in VARIANTS))
    require_datasets(args.datasets_root, dataset_names)
    if not args.quick:
        for dataset_name in dataset_names:
            variants += planned_with_budgets(dataset_name, scratch, args.datasets_root, device, precision)
    prepared = {}
    for dataset_name in dataset_names:
        configurations = sorted({variant.configuration for variant in variants if variant.dataset == dataset_name})
        prepared[dataset_name] = prepare(dataset_name, scratch, cases, configurations, args.datasets_root)
    model = (machine_throughput if args.cached_model else measure_throughput)(device, precision)
    print_model(model)
    rows = []
    for variant in variants:
        dataset, work = prepared[variant.dataset]
        rows.append(measure_variant(variant, dataset, work, model, device, precision, scratch, args.quick))
    print_table(rows)
    worst = max(abs(row["ratio"] - 1) for row in rows)
    within = within_tolerance(rows)
    if not args.quick:
        out = args.out or REPOSITORY / "benchmarks" / "results" / f"throughput_model_{device.type}.json"
        write_json(out, {"provenance": provenance(), "device": str(device), "precision": precision,
                         "tolerance": TOLERANCE, "within_tolerance": within, "configurations": rows,
                         "model": model.to_json(), "seconds": time.perf_counter() - started})
        print(f"written to {out}")
    print(f"{within} of {len(rows)} configurations within {TOLERANCE:.0%}")
    print(f"\nworst prediction off by {worst:.0%} (tolerance {TOLERANCE:.0%}); {time.perf_counter() - started:.0f} s "
          f"in all; device {device}, {precision}")
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
