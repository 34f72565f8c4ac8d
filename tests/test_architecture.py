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
