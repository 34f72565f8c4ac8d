"""Check the planner's training-memory estimate against real training steps (predicted vs measured peak memory).

For several plans (2D and 3D, plain and residual encoder, several budgets) this builds the planned network with
``autoseg.networks.build_network``, runs real training steps (SGD with Nesterov momentum, cross-entropy on every
deep-supervision output, forward + backward + update) in a fresh subprocess per plan, and prints the predicted and
the measured peak memory and their ratio.

- CUDA: ``torch.cuda.max_memory_allocated`` under mixed precision (``torch.autocast``), plans made with the
  ``mixed`` coefficients.
- CPU: growth of the peak resident set size (``VmHWM`` in ``/proc/self/status``, reset through ``clear_refs``)
  over the resident size just before the network is built, in float32, plans made with the ``float32``
  coefficients. glibc is told to serve every allocation above 64 KiB with ``mmap`` so freed tensors leave the
  resident set at once and the peak is the true peak.

``--fit`` prints the least-squares activation factor and overhead for the precision measured, to paste into
``autoseg/planning/memory_model.py``. Goal: measured <= budget for every plan, predicted within 20 % of measured.

Usage::

    python benchmarks/memory_model.py                  # default plan list, table on stdout
    python benchmarks/memory_model.py --fit --json out.json

The real datasets' plans are included when ``--datasets-root`` (default ``$AUTOSEG_TEST_DATA``, else
``../shared/datasets`` beside the project root) holds them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# The project for autoseg, this folder for locations.py (also when a test loads this file by its path).
sys.path[:0] = [str(REPOSITORY), str(Path(__file__).resolve().parent)]

from locations import add_datasets_root_argument, datasets_root  # noqa: E402

from autoseg.fingerprint.synthetic import synthetic_fingerprint  # noqa: E402
from autoseg.planning import plan_experiment  # noqa: E402
from autoseg.planning.memory_model import (  # noqa: E402
    PRECISIONS,
    activation_breakdown,
    parameter_count,
    stored_activation_elements,
)
from autoseg.records.configuration_parts import Network  # noqa: E402
from autoseg.records.plans import Configuration  # noqa: E402
from autoseg.records.work_folder import WorkFolder  # noqa: E402


def _real_dataset(folder: str, datasets: Path) -> tuple[dict, object] | None:
    """Fingerprint of a shared dataset (cached in a temporary working folder), or None when it is absent."""
    root = datasets / folder
    if not root.is_dir():
        return None
    from autoseg.data.raw_folder import load_raw_dataset
    from autoseg.fingerprint import compute_fingerprint

    dataset = load_raw_dataset(root)
    work = Path(tempfile.gettempdir()) / "autoseg_memory_benchmark"
    return compute_fingerprint(dataset, WorkFolder.for_dataset(work, root), workers=2), dataset


def benchmark_plans(
    *, precision: str, budgets: list[float], quick: bool, datasets: Path | None = None
) -> list[dict]:
    """The plans to measure: name, resolved configuration, channels, batch, budget and prediction (the real
    datasets' plans where ``datasets``, default :func:`locations.datasets_root`, holds them)."""
    sources: list[tuple[str, dict, object]] = []
    for folder, short in (("Dataset004_Hippocampus", "hippocampus"), ("Dataset018_HC18", "hc18")):
        real = _real_dataset(folder, datasets or datasets_root())
        if real is not None:
            sources.append((short, *real))
    anisotropic = synthetic_fingerprint(name="anisotropic", spacing=[3.0, 0.8, 0.8], shape=[60, 400, 400])
    large = synthetic_fingerprint(name="large", spacing=[1.0, 0.8, 0.8], shape=[300, 512, 512])
    sources += [("anisotropic", *anisotropic), ("large", *large)]

    wanted = {
        "hippocampus": ["3d_fullres", "2d"],
        "hc18": ["2d"],
        "anisotropic": ["3d_fullres"],
        "large": ["3d_lowres", "3d_fullres"],
    }
    plans = []
    for preset in ("default", "resenc-m"):
        for budget in budgets:
            for short, fingerprint, dataset in sources:
                planned = plan_experiment(
                    fingerprint, dataset, preset=preset, gpu_memory_gb=budget, training_precision=precision
                )
                plan = planned.to_json()
                for name in wanted[short]:
                    if name not in plan["configurations"]:
                        continue
                    if quick and (preset != "default" or name != wanted[short][0]):
                        continue
                    configuration = planned.configuration(name).to_json()
                    in_channels = dataset.num_channels
                    out_channels = dataset.num_output_channels
                    network = Network.from_json(configuration["network"])
                    plans.append({
                        "name": f"{short}/{name}/{preset}/{budget:g}GB",
                        "architecture": configuration["network"]["architecture"],
                        "configuration": configuration,
                        "in_channels": in_channels,
                        "out_channels": out_channels,
                        "budget_gb": budget,
                        "predicted_gb": configuration["estimated_memory_gb"],
                        "activation_elements": stored_activation_elements(
                            network, configuration["patch_size"], in_channels=in_channels, out_channels=out_channels
                        ),
                        "breakdown": activation_breakdown(
                            network, configuration["patch_size"], in_channels=in_channels, out_channels=out_channels
                        ),
                        "parameters": parameter_count(network, in_channels=in_channels, out_channels=out_channels),
                    })
    # The same network can come out of several budgets (batch capped by the dataset): measure each once.
    unique, seen = [], set()
    for plan in plans:
        key = json.dumps([plan["configuration"]["patch_size"], plan["configuration"]["batch_size"],
                          plan["configuration"]["network"]])
        if key not in seen:
            seen.add(key)
            unique.append(plan)
    return unique


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(plan: dict, *, steps: int) -> dict:
    """Run ``steps`` training steps of one plan in this process and return its peak memory (GiB) and step time."""
    import torch

    from autoseg.networks import build_network

    configuration = plan["configuration"]
    batch = configuration["batch_size"]
    patch = configuration["patch_size"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    # Warm-up on a tiny network so library initialisation (oneDNN, OpenMP pools, cuDNN) is not counted.
    record = Configuration.from_json("benchmark", configuration)
    tiny = build_network(record, in_channels=plan["in_channels"], out_channels=plan["out_channels"]).to(device)
    small_patch = [int(math.prod(stride[axis] for stride in configuration["network"]["strides"])) * 4
                   for axis in range(len(patch))]
    outputs = tiny(torch.zeros(1, plan["in_channels"], *small_patch, device=device))
    sum(o.float().mean() for o in outputs).backward()
    del tiny, outputs

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _resident_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as stream:  # resets VmHWM to the current resident size
            stream.write("5")

    network = build_network(Configuration.from_json("benchmark", configuration), in_channels=plan["in_channels"],
                            out_channels=plan["out_channels"])
    network = network.to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    image = torch.randn(batch, plan["in_channels"], *patch, device=device)
    targets = []
    size = list(patch)
    for stride in configuration["network"]["strides"][:-1]:
        size = [s // st for s, st in zip(size, stride, strict=True)]
        targets.append(torch.randint(0, plan["out_channels"], (batch, *size), device=device))
    weights = [1 / 2**i for i in range(len(targets))]
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            outputs = network(image)
            loss = sum(w * torch.nn.functional.cross_entropy(o.float(), t)
                       for w, o, t in zip(weights, outputs, targets, strict=True))
        loss.backward()
        optimizer.step()
        del outputs, loss
        if device.type == "cuda":
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = _resident_kib("VmHWM") * 1024 - baseline
    return {"measured_gb": peak / 1024**3, "seconds_per_step": min(durations), "device": str(device)}


def measure_in_subprocess(plan: dict, *, steps: int) -> dict:
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(
        [sys.executable, __file__, "--measure-one", json.dumps(plan), "--steps", str(steps)],
        capture_output=True, text=True, env=environment, check=False,
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def fit_coefficients(rows: list[dict], precision: str) -> dict:
    """Fit ``activation_factor``, ``bytes_per_parameter`` (per architecture) and ``overhead_bytes``.

    Least squares on the *relative* error (each row weighted by 1 / measured), then every coefficient is scaled by
    the largest measured / predicted ratio so the estimate bounds every measurement from above: the planner
    compares it with the budget, so under-predicting is the error that matters.
    """
    import numpy as np

    coefficients = PRECISIONS[precision]
    usable = [r for r in rows if "measured_gb" in r]
    architectures = sorted({r["architecture"] for r in usable})
    columns = []
    for r in usable:
        activations = coefficients.bytes_per_activation * r["batch_size"] * r["activation_elements"]
        columns.append([activations, *[r["parameters"] * (r["architecture"] == a) for a in architectures], 1.0])
    design = np.array(columns, dtype=np.float64)
    measured = np.array([r["measured_gb"] * 1024**3 for r in usable])
    weights = 1.0 / measured
    solution, *_ = np.linalg.lstsq(design * weights[:, None], measured * weights, rcond=None)
    ratios = design @ solution / measured
    solution = solution / ratios.min()
    ratios = ratios / ratios.min()
    return {
        "activation_factor": round(float(solution[0]), 4),
        "bytes_per_parameter": {a: round(float(v), 3) for a, v in zip(architectures, solution[1:-1], strict=True)},
        "overhead_bytes": round(float(solution[-1])),
        "predicted_over_measured_after_fit": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
        "rows": len(usable),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=None,
                        help="GPU-memory budgets in GB (default: 0.5 1 2 on CPU, 4 8 16 on CUDA)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per plan (the peak includes momentum)")
    parser.add_argument("--quick", action="store_true", help="only the default preset and first configuration")
    parser.add_argument("--fit", action="store_true", help="print fitted coefficients")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    add_datasets_root_argument(parser)
    parser.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure_one is not None:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        print(json.dumps(measure_one(json.loads(arguments.measure_one), steps=arguments.steps)))
        return 0

    import torch

    precision = "mixed" if torch.cuda.is_available() else "float32"
    budgets = arguments.budgets or ([4.0, 8.0, 16.0] if precision == "mixed" else [0.5, 1.0, 2.0])
    plans = benchmark_plans(precision=precision, budgets=budgets, quick=arguments.quick,
                            datasets=arguments.datasets_root)
    print(f"precision {precision}; {len(plans)} plans; coefficients {PRECISIONS[precision]}", flush=True)
    header = f"{'plan':42s} {'patch':>16s} {'batch':>5s} {'budget':>6s} {'predicted':>9s} {'measured':>8s} " \
             f"{'pred/meas':>9s} {'fits':>4s} {'s/step':>6s}"
    print(header, flush=True)
    rows = []
    for plan in plans:
        result = measure_in_subprocess(plan, steps=arguments.steps)
        row = {key: plan[key] for key in ("name", "architecture", "budget_gb", "predicted_gb", "activation_elements",
                                                "breakdown", "parameters")}
        row.update(patch_size=plan["configuration"]["patch_size"], batch_size=plan["configuration"]["batch_size"])
        row.update(result)
        rows.append(row)
        patch = "x".join(str(v) for v in row["patch_size"])
        if "error" in row:
            print(f"{row['name']:42s} {patch:>16s} {row['batch_size']:5d} ERROR {row['error']}", flush=True)
            continue
        ratio = row["predicted_gb"] / row["measured_gb"]
        fits = "yes" if row["measured_gb"] <= row["budget_gb"] else "NO"
        print(f"{row['name']:42s} {patch:>16s} {row['batch_size']:5d} {row['budget_gb']:6.2f} "
              f"{row['predicted_gb']:9.3f} {row['measured_gb']:8.3f} {ratio:9.2f} {fits:>4s} "
              f"{row['seconds_per_step']:6.1f}", flush=True)
    measured = [r for r in rows if "measured_gb" in r]
    if measured:
        errors = [abs(r["predicted_gb"] / r["measured_gb"] - 1) for r in measured]
        print(f"max |predicted/measured - 1| = {max(errors):.1%}; "
              f"all within budget: {all(r['measured_gb'] <= r['budget_gb'] for r in measured)}")
    if arguments.fit and measured:
        print("fit:", json.dumps(fit_coefficients(rows, precision)))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
