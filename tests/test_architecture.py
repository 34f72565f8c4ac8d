"""The layering rule of docs/design.md, checked on the code itself: stages never import one another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "autoseg"


def test_import_linter_contracts_are_kept():
    """``lint-imports`` reads the contracts from pyproject.toml; a stage importing another stage breaks them."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--no-cache"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _function_local_autoseg_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoseg"):
                    found.append(f"{path.relative_to(REPOSITORY)}:{node.lineno} imports {node.module}")
    return found


def test_no_function_hides_an_autoseg_import():
    """Imports between autoseg modules sit at the top of each module, where import-linter and readers see them."""
    assert _function_local_autoseg_imports() == []
def test_no_function_is_longer_than_sixty_lines_and_no_record_function_longer_than_forty():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        limit = 40 if path.parent.name == "records" else 60
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    too_long.append(f"{path.relative_to(REPOSITORY)}:{node.lineno} {node.name} ({length} lines)")
    assert too_long == []


BUDGET_OWNER = PACKAGE / "pipeline" / "budget.py"
BUDGET_CONSTANTS = {"AFTER_TRAINING_SHARE", "PREPROCESSING_SHARE", "DEFAULT_CPU_BUDGET_SECONDS",
                    "AFTER_TRAINING_FIXED_SECONDS", "AFTER_TRAINING_SAFETY", "OPTIONAL_WORK_SHARE"}


def _budget_arithmetic_outside_its_owner() -> list[str]:
    """Uses of the budget's shares, and arithmetic on a run's budget or what is left of it, outside
    ``pipeline/budget.py`` (a fold's own training budget, ``time_budget_seconds``, is the training loop's)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == BUDGET_OWNER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else []
            if set(names) & BUDGET_CONSTANTS:
                found.append(f"{path.relative_to(REPOSITORY)}:{node.lineno} uses {names[0]}")
            if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
                operands = [node.left, node.right] if isinstance(node, ast.BinOp) else [node.target, node.value]
                spelled = {getattr(operand, "attr", getattr(operand, "id", None)) for operand in operands}
                if spelled & {"budget_seconds", "seconds_left"}:  # spending it; dividing for display is not
                    found.append(f"{path.relative_to(REPOSITORY)}:{node.lineno} computes with {spelled}")
    return found


def test_the_run_budget_is_computed_in_one_module():
    """How a time budget becomes seconds (shares, reserve, each fold's seconds, the CPU default) is decided in
    ``autoseg/pipeline/budget.py`` alone (docs/design.md, "How a time budget becomes a plan and a schedule")."""
    assert _budget_arithmetic_outside_its_owner() == []
