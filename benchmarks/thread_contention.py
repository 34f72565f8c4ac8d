"""Benchmark: how much a training step slows down when another process wants one of the cores.

Measured in separate processes (OpenMP reads its settings once), each timing ``--steps`` forward/backward/optimiser
steps of a Hippocampus-sized 3D U-Net (16-128 features, batch 2 of 40x56x40, or ``--two-d``: HC18-sized 2D, 16-512
features, batch 4 of 160x224) in bfloat16 autocast where the CPU has it:

* torch threads: all CPUs (autoseg's default for training) or one;
* OpenMP waiting: the library default (spinning) or ``OMP_WAIT_POLICY=PASSIVE`` (sleeping);
* machine: quiet, or with a second torch job (``nice -n 15``, two threads of small matrix products) beside it.

The ratio loaded / quiet per setting is what a user with a browser or a second job open pays. On 2026-12-07 (Intel
Xeon with bfloat16) this synthetic second job cost 1.0-1.2x, while the same step beside a real niced ``autoseg run``
(its training threads and two augmentation workers) took 4.4-5.8 s instead of 0.18 s with two threads and 0.3 s with
one: the synthetic job does not reproduce that yet (see the session's closing note). Results go to
``benchmarks/results/thread_contention.json`` with the machine's provenance.

Usage:

    python benchmarks/thread_contention.py [--steps 6] [--two-d]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance

REPOSITORY = Path(__file__).resolve().parents[1]

STEP_SCRIPT = """
import sys, time, torch
threads, steps, two_d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(threads)
from autoseg.networks import build_network
from autoseg.records.plans import Configuration
dims = 2 if two_d else 3
features = [16, 32, 64, 128, 256, 512] if two_d else [16, 32, 64, 128]
patch = [160, 224] if two_d else [40, 56, 40]
stages = len(features)
configuration = Configuration.from_json("benchmark", {
    "dimension": dims, "spacing": [1.0] * 3, "median_shape": [1, *patch] if two_d else patch, "patch_size": patch,
    "batch_size": 4 if two_d else 2,
    "network": {"architecture": "plain_unet", "features_per_stage": features, "kernel_sizes": [[3] * dims] * stages,
                "strides": [[1] * dims] + [[2] * dims] * (stages - 1), "blocks_per_stage_encoder": [2] * stages,
                "convs_per_stage_decoder": [2] * (stages - 1)},
    "normalization": [{"scheme": "zscore", "use_mask": False}],
    "resampling": {"anisotropic": False, "image_order": 3, "label_order": 1, "coarse_axis_order": 0},
    "batch_dice": False,
}, transpose_forward=[0, 1, 2])
network = build_network(configuration, in_channels=1, out_channels=2, deep_supervision=False)
data = torch.randn(configuration.batch_size, 1, *patch)
optimiser = torch.optim.SGD(network.parameters(), lr=0.01)
from autoseg.utils.precision import autocast_for
times = []
for step in range(steps + 1):
    started = time.perf_counter()
    with autocast_for(torch.device("cpu"), "auto"):
        loss = network(data).float().mean()
    loss.backward()
    optimiser.step()
    optimiser.zero_grad()
    times.append(time.perf_counter() - started)
print(sorted(times[1:])[len(times[1:]) // 2])
"""

# A second torch job (two threads of small matrix products), as another training or prediction would be.
BUSY_JOB = "import torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\nwhile True:\n    a @ a"


def median_step(threads: int, policy: str | None, steps: int, two_d: bool) -> float:
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    environment["PYTHONPATH"] = str(REPOSITORY)
    if policy:
        environment["OMP_WAIT_POLICY"] = policy
    result = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(threads), str(steps), str(int(two_d))],
                            env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--two-d", action="store_true")
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "results" / "thread_contention.json")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    settings = [(cpus, None), (cpus, "PASSIVE"), (1, None)]
    rows = []
    for threads, policy in settings:
        quiet = median_step(threads, policy, args.steps, args.two_d)
        busy = subprocess.Popen(["nice", "-n", "15", sys.executable, "-c", BUSY_JOB])
        try:
            time.sleep(0.5)
            loaded = median_step(threads, policy, args.steps, args.two_d)
        finally:
            busy.kill()
            busy.wait()
        rows.append({"threads": threads, "omp_wait_policy": policy or "default", "quiet_seconds": quiet,
                     "loaded_seconds": loaded, "loaded_over_quiet": loaded / quiet})
        print(f"threads {threads}  OMP_WAIT_POLICY {policy or 'default':8s} quiet {quiet:.3f} s  "
              f"one busy process beside it {loaded:.3f} s  ({loaded / quiet:.1f}x)", flush=True)
    args.output.write_text(json.dumps({"provenance": provenance(), "network": "2d" if args.two_d else "3d",
                                       "steps": args.steps, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
