"""README's demo figures are the newest measured ones: each line quotes ``benchmarks/results/demo*.json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from autoseg.utils.progress import format_duration

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
# The figure lines of the demo paragraph: a Markdown list right after this sentence opener.
MEASURED_OPENER = "**The demo, measured.**"


def newest_demo_result() -> tuple[Path, dict]:
    """The demo result file with the latest ``provenance.date`` (ISO 8601, so the strings sort by time)."""
    files = sorted((REPOSITORY / "benchmarks" / "results").glob("demo*.json"))
    assert files, "no benchmarks/results/demo*.json: run python benchmarks/demo.py"
    results = [(path, json.loads(path.read_text(encoding="utf-8"))) for path in files]
    return max(results, key=lambda item: item[1]["provenance"]["date"])


def expected_figure_lines(result: dict) -> list[str]:
    """README's figure lines as the result file states them (the wording is fixed here, the numbers come from it)."""
    folds = ", ".join(str(fold) for fold in result["folds"])
    steps = " + ".join(str(steps) for steps in result["steps"])
    dice = ", ".join(f"{name} {'n/a' if value is None else f'{value:.3f}'}"
                     for name, value in result["cross_validation_dice"].items())
    machine = result["provenance"]
    bfloat16 = "with" if machine["cpu_native_bfloat16"] else "without"
    return [
        f"- machine: {machine['cpu']} ({bfloat16} native bfloat16), {machine['cores']} cores, "
        f"{machine['date'][:10]}, commit {machine['commit'][:7]}",
        f"- plan fitted to the budget: `{result['configuration']}`, {result['features']} features, batch "
        f"{result['batch_size']}, fold {folds}, {steps} steps",
        f"- wall time: {format_duration(result['wall_seconds'])}",
        f"- cross-validation Dice: {dice}",
        f"- the log in a file: {result['log']['bytes'] // 1024} KB, {result['log']['lines']} lines, "
        f"{result['log']['carriage_returns']} carriage returns",
    ]


def readme_figure_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert MEASURED_OPENER in text, f"README.md has no demo figures after {MEASURED_OPENER!r}"
    after = text.split(MEASURED_OPENER, 1)[1].split("\n\n", 2)[1]
    return [line for line in after.splitlines() if line.startswith("- ")]


def test_every_demo_figure_in_readme_matches_the_newest_result_file() -> None:
    path, result = newest_demo_result()
    assert readme_figure_lines() == expected_figure_lines(result), f"README's demo figures differ from {path.name}"
    assert f"benchmarks/results/{path.name}" in README.read_text(encoding="utf-8")


def test_the_demo_paragraph_states_no_other_measured_figure() -> None:
    """Dice values, durations and step counts of the demo appear only in the quoted lines, never in prose."""
    paragraph = README.read_text(encoding="utf-8").split("**What the demo does.**", 1)[1].split(MEASURED_OPENER)[0]
    assert not re.search(r"0\.9\d\d|\d+ min \d+ s|\d{3,} steps", paragraph), paragraph
