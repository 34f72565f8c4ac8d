"""Pages a CPU training step faults in per byte of large allocation counted on the ``meta`` device.

    python benchmarks/fresh_pages.py [--datasets-root DIR]

For Hippocampus 2d and 3d_fullres as planned (``autoseg plan``, in a scratch folder) and the 3D 32^3 probe at batch 8,
times real training steps in float32 (``autoseg.pipeline.machine_benchmark.time_training_steps``) and divides the
minor page faults they caused (``ru_minflt``, 4 KiB pages) by the bytes of allocations of at least 32 MiB that
``autoseg.planning.step_cost.count_training_step`` counts for the same steps: the ratio behind
``UNCOUNTED_ALLOCATION_FACTOR`` (docs/planning.md, "Fresh pages"). Prints a table and writes
``benchmarks/results/fresh_pages.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from locations import add_datasets_root_argument, require_datasets, scratch_folder
from provenance import REPOSITORY, provenance

from autoseg.pipeline.machine_benchmark import PROBES, probe_configuration, time_training_steps
from autoseg.planning.step_cost import count_training_step
from autoseg.records.plans import Configuration, load_plans

HIPPOCAMPUS = "Dataset004_Hippocampus"
PAGE_BYTES = 4096
WARMUP, TIMED = 1, 3


def hippocampus_configurations(datasets: Path) -> list[Configuration]:
    work = scratch_folder("fresh_pages")
    plans_file = work / HIPPOCAMPUS / "plans.json"
    if not plans_file.is_file():
        subprocess.run([sys.executable, "-m", "autoseg", "plan", str(datasets / HIPPOCAMPUS), "--work-dir", str(work)],
                       check=True, capture_output=True)
    plans = load_plans(plans_file)
    return [plans.configuration("2d"), plans.configuration("3d_fullres")]


def pages_per_counted_byte(configuration: Configuration) -> dict:
    """Minor faults x page size over counted large-allocation bytes, per step, in float32."""
    _, large_bytes = count_training_step(configuration, batch_size=configuration.batch_size, in_channels=1,
                                         out_channels=3, precision="float32")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = time_training_steps(configuration, torch.device("cpu"), "float32", warmup=WARMUP, timed=TIMED)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    per_step = faults * PAGE_BYTES / (WARMUP + TIMED)
    return {"configuration": configuration.name, "batch_size": configuration.batch_size,
            "patch_size": list(configuration.patch_size), "counted_large_bytes": large_bytes,
            "faulted_bytes_per_step": per_step, "ratio": per_step / large_bytes if large_bytes else None,
            "step_seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_root_argument(parser)
    args = parser.parse_args()
    require_datasets(args.datasets_root, [HIPPOCAMPUS])
    probe = next(probe for probe in PROBES if probe.name == "3d plain 32^3 x2")
    configurations = [*hippocampus_configurations(args.datasets_root), probe_configuration(probe, batch_factor=4)]
    rows = [pages_per_counted_byte(configuration) for configuration in configurations]
    for row in rows:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['configuration']:<24} batch {row['batch_size']:>4}  "
              f"counted {row['counted_large_bytes'] / 1e9:.2f} GB  "
              f"faulted {row['faulted_bytes_per_step'] / 1e9:.2f} GB per step  ratio {ratio}")
    path = REPOSITORY / "benchmarks" / "results" / "fresh_pages.json"
    path.write_text(json.dumps({"provenance": provenance(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPOSITORY)}")


if __name__ == "__main__":
    main()
