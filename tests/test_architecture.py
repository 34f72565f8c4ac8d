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


def _relative(path: Path) -> str:
    return path.relative_to(REPOSITORY).as_posix()


def _json_reads(path: Path) -> list[int]:
    """Lines of ``read_json(...)``, ``json.load(...)`` and ``json.loads(...)`` calls in one module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if (isinstance(function, ast.Name) and function.id == "read_json") or (
            isinstance(function, ast.Attribute) and function.attr in ("load", "loads")
            and isinstance(function.value, ast.Name) and function.value.id == "json"
        ):
            lines.append(node.lineno)
    return lines


# JSON reads outside autoseg/records/ of files that are no working-folder file: raw input, caches, locks, archives.
NOT_WORKING_FOLDER_FILES = {
    "autoseg/utils/files.py",  # read_json itself, the helper the records use
    "autoseg/utils/locking.py",  # who holds a lock, read from the open lock file descriptor
    "autoseg/sharing/submission.py",  # a submission folder's manifest
    "autoseg/sharing/model_archive.py",  # the manifest inside a shared model archive
    "autoseg/planning/step_cost.py",  # json.loads of an in-memory cache key, no file
    "autoseg/pipeline/machine_benchmark.py",  # the per-machine throughput cache in ~/.cache/autoseg
}

def test_working_folder_files_are_read_only_through_records():
    """Every stage reads what an earlier stage wrote through a typed record in autoseg/records/, not a raw dict."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _relative(path)
        if name.startswith("autoseg/records/") or name in NOT_WORKING_FOLDER_FILES:
            continue
        offenders += [f"{name}:{line}" for line in _json_reads(path)]
    assert offenders == []


def test_no_module_is_longer_than_five_hundred_lines():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 500:
            too_long.append(f"{_relative(path)} ({lines} lines)")
    assert too_long == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPOSITORY).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the autoseg modules it imports, ``if TYPE_CHECKING:`` imports included (``ast.walk`` sees all)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycle_between_autoseg_modules():
    """Modules form layers: none imports, even only for type checking, a module that imports it back."""
    assert _cycles(_import_graph()) == []


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
