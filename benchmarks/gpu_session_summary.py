"""The GPU session's summary (benchmarks/gpu_session.py): each step's result file read back, a digest of the
benchmarks' JSON (memory model, throughput model, training logs) and the Markdown tables of summary.md.

Everything here works on the summary's plain data (dicts and lists as the JSON holds them), so a saved
``summary.json`` can be rendered again: ``render_markdown(json.load(open("summary.json")))``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gpu_session_prepare import CONFIGURATION


def read_result(path: Path) -> object | None:
    """A step's result: JSON, or JSON Lines (a list of records); None when the step wrote none."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def memory_model_digest(rows: list[dict]) -> dict:
    """Worst relative error, whether every plan fits its budget, and the least-squares fit of memory_model.py."""
    measured = [row for row in rows if "measured_gb" in row]
    digest: dict = {"plans": len(rows), "measured": len(measured),
                    "errors": [f"{row['name']}: {row['error']}" for row in rows if "error" in row]}
    if not measured:
        return digest
    precision = "mixed" if str(measured[0].get("device", "")).startswith("cuda") else "float32"
    digest.update(
        precision=precision,
        max_relative_error=round(max(abs(row["predicted_gb"] / row["measured_gb"] - 1) for row in measured), 4),
        all_within_budget=all(row["measured_gb"] <= row["budget_gb"] for row in measured),
    )
    try:
        import memory_model  # benchmarks/memory_model.py: imports torch and autoseg, hence only here

        digest["fit"] = memory_model.fit_coefficients(measured, precision)
    except Exception as error:  # the summary is written whatever the fit does
        digest["fit"] = {"error": f"{type(error).__name__}: {error}"}
    return digest


def throughput_digest(result: dict) -> dict:
    """Each configuration's predicted and measured seconds per iteration, and how many are within tolerance."""
    keys = ("name", "batch", "gflop", "predicted", "measured", "ratio", "data_wait")
    return {"device": result.get("device"), "precision": result.get("precision"),
            "tolerance": result.get("tolerance"), "within_tolerance": result.get("within_tolerance"),
            "configurations": [{key: row.get(key) for key in keys} for row in result.get("configurations", [])]}


def training_digest(records: list[dict]) -> dict:
    """Seconds per iteration from a fold's log.jsonl: every epoch but the first (a warm-up)."""
    timed = records[1:] or records
    iterations = sum(record["iterations"] for record in timed)
    seconds = sum(record["train_seconds"] for record in timed)
    wait = sum(record.get("data_wait_seconds", 0.0) for record in timed)
    return {"epochs": len(records), "timed_iterations": iterations,
            "seconds_per_iteration": round(seconds / iterations, 4) if iterations else None,
            "iterations_per_second": round(iterations / seconds, 3) if seconds else None,
            "data_wait_share": round(wait / seconds, 3) if seconds else None}


DIGESTS: dict[str, Callable] = {"memory_model": memory_model_digest, "throughput_model": throughput_digest,
                                "train_auto": training_digest, "train_float32": training_digest}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if value is None else str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def steps_markdown(found: dict) -> str:
    rows = [[record["name"], record["status"], record["seconds"], record["cap_seconds"], record["log"],
             record.get("gpu_peak_memory_mib"), record.get("gpu_mean_utilisation_percent")]
            for record in found["steps"]]
    return "\n## Steps\n\n" + markdown_table(
        ["step", "status", "seconds", "cap s", "log", "GPU peak memory.used MiB", "GPU mean utilisation %"], rows)


def memory_markdown(result: dict) -> str:
    rows = [[row["name"], "x".join(map(str, row["patch_size"])), row["batch_size"], row["budget_gb"],
             f"{row['predicted_gb']:.3f}", f"{row['measured_gb']:.3f}",
             f"{row['predicted_gb'] / row['measured_gb']:.2f}",
             "yes" if row["measured_gb"] <= row["budget_gb"] else "NO"]
            for row in result["data"] if "measured_gb" in row]
    digest = result["digest"]
    return ("\n## Memory model (benchmarks/memory_model.py --fit)\n\n"
            + markdown_table(["plan", "patch", "batch", "budget GB", "predicted GB", "measured GB", "pred/meas",
                              "fits"], rows)
            + f"\nprecision {digest.get('precision')}; max |predicted/measured - 1| = "
              f"{digest.get('max_relative_error')}; all within budget: {digest.get('all_within_budget')}\n"
            + f"fit: {json.dumps(digest.get('fit'))}\n")


def throughput_markdown(result: dict) -> str:
    digest = result["digest"]
    rows = [[row["name"], row["batch"], f"{row['gflop']:.0f}", f"{row['predicted']:.3f}", f"{row['measured']:.3f}",
             f"{row['ratio']:.2f}", f"{row['data_wait']:.3f}"] for row in digest["configurations"]]
    return ("\n## Throughput model (benchmarks/throughput_model.py)\n\n"
            + markdown_table(["configuration", "batch", "GFLOP", "predicted s/it", "measured s/it", "ratio",
                              "data wait s/it"], rows)
            + f"\n{digest['within_tolerance']} of {len(rows)} configurations within {digest['tolerance']:.0%} "
              f"(device {digest['device']}, {digest['precision']})\n")


def training_markdown(found: dict) -> str:
    training, results = found["training"], found["results"]
    rows = []
    for precision in ("auto", "float32"):
        digest = results.get(f"train_{precision}", {}).get("digest")
        if digest:
            shown_precision = f"auto = {training['auto_precision']}" if precision == "auto" else precision
            rows.append([shown_precision, "x".join(map(str, training["patch_size"] or [])), training["batch_size"],
                         digest["timed_iterations"], digest["seconds_per_iteration"],
                         digest["iterations_per_second"], f"{digest['data_wait_share']:.0%}"])
    text = (f"\n## autoseg training speed ({training['dataset']}, {CONFIGURATION}, fold 0, device "
            f"{training['device']})\n\n" + markdown_table(
                ["precision", "patch", "batch", "timed iterations (epoch 1 not counted)", "s/it", "it/s",
                 "data wait share"], rows))
    if "auto_speedup_over_float32" in training:
        text += (f"\nauto precision gives {training['auto_speedup_over_float32']:.2f}x the iterations per second "
                 "of float32.\n")
    return text


def predict_markdown(result: dict) -> str:
    data = result["data"]
    rows = [[run["command"], run["cases"], run["wall_seconds"], run["seconds_per_case"]] for run in data["runs"]]
    return ("\n## autoseg prediction speed (wall time of the whole command / cases, start-up included)\n\n"
            + markdown_table([f"command (device {data['device']}, default precision)", "cases", "wall s", "s/case"],
                             rows))


def render_markdown(found: dict) -> str:
    """The summary's tables, as summary.md holds them and the session prints them."""
    session = found["session"]
    origin = found["provenance"]
    text = (f"# GPU session: {origin.get('date')}\n\nmode: {session['mode']}; {session['seconds']:.0f} s of a "
            f"{session['budget_seconds']} s budget; steps: {', '.join(session['steps'])}\n\n"
            f"- commit {origin.get('commit', 'unknown')}, CPU {origin.get('cpu')}, GPU {origin.get('gpu')}\n")
    text += "".join(f"- {name}: {value}\n" for name, value in found["facts"].items())
    text += "".join(f"- {note}\n" for note in found["notes"])
    text += steps_markdown(found)
    results = found["results"]
    if "digest" in results.get("memory_model", {}):
        text += memory_markdown(results["memory_model"])
    if "digest" in results.get("throughput_model", {}):
        text += throughput_markdown(results["throughput_model"])
    if found["training"]:
        text += training_markdown(found)
    if "predict" in results:
        text += predict_markdown(results["predict"])
    nnunet = [record for record in found["steps"] if record["name"].startswith("nnunet_")]
    if any(record["status"] == "ok" for record in nnunet):
        text += ("\n## autoseg next to nnU-Net v2 (train_speed.py, predict_speed.py: CPU comparisons)\n\n"
                 "Neither script writes JSON: their tables are at the end of nnunet.log.\n")
    return text
