"""No committed file names a folder of one machine: a path in code, docs or results must work on any checkout.

Machine folders creep in through copied command lines and result files (a home folder, a named temporary folder,
the shared folder of one workplace). Paths belong relative to the project root (``../shared/datasets``), in an
argument or an environment variable, or in ``tempfile.gettempdir()``; examples in prose use generic paths such as
``/data/Dataset004_Hippocampus`` or ``~/autoseg_work``, which this test leaves alone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from optional import missing

REPOSITORY = Path(__file__).resolve().parents[1]

# What names one machine's folders.
MACHINE_PATHS = re.compile(
    r"""
      (?<![\w.~-])/(?:work|root|Users)/          # workplace mounts, the root user's and a Mac user's home
    | (?<![\w.~-])/home/[\w.-]+/                 # a Linux user's home
    | (?<![\w.~-])/tmp/[\w.-]+                   # a named folder or file in the temporary folder
    | [.]library/                                # this workplace's reference library
    """,
    re.VERBOSE,
)

# Hits that are not a machine's folder, each with why; (file, exact text). Keep this short.
ALLOWED = {
    # An archive member that tries to escape to an absolute path: the test checks that nothing is written there.
    ("tests/test_model_archive.py", "/tmp/autoseg_absolute_escape.json"),
}
# This file: its examples below are machine paths on purpose, to show that the check refuses them.
THIS_FILE = Path(__file__).resolve()


def tracked_files() -> list[Path]:
    """The files git tracks (staged ones included); never a user's untracked files, such as a virtualenv in the
    clone, whose scripts name its absolute folder."""
    try:
        completed = subprocess.run(
            ["git", "ls-files", "-z", "--cached"],
            cwd=REPOSITORY, capture_output=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        missing(f"git could not list the project's files ({error}); this check needs a git checkout")
    if completed.returncode != 0:
        missing(f"{REPOSITORY} is not a git checkout (an sdist or a copy): there is no list of tracked files")
    names = sorted({name for name in completed.stdout.decode("utf-8", "surrogateescape").split("\0") if name})
    return [REPOSITORY / name for name in names]


def text_lines(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary file, a link or a file listed but deleted in the working tree."""
    if path.is_symlink() or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", "replace").splitlines()


def machine_paths(path: Path, lines: list[str]) -> list[str]:
    """``file:line: text`` for every machine path in ``lines`` outside the allow-list."""
    name = path.relative_to(REPOSITORY).as_posix()
    hits = []
    for number, line in enumerate(lines, start=1):
        for match in MACHINE_PATHS.finditer(line):
            if (name, match.group()) not in ALLOWED:
                hits.append(f"{name}:{number}: {line.strip()[:160]}")
                break
    return hits


def test_no_committed_file_names_a_folder_of_one_machine() -> None:
    hits = []
    for path in tracked_files():
        if path.resolve() == THIS_FILE:
            continue
        lines = text_lines(path)
        if lines is not None:
            hits += machine_paths(path, lines)
    if hits:
        pytest.fail(
            f"{len(hits)} line(s) name a folder of one machine; write the path relative to the project root "
            "(../shared/...), take it from an argument or environment variable, or use a generic example "
            "(/data/..., ~/...):\n" + "\n".join(hits),
            pytrace=False,
        )


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("see /work/shared/tools/nnunet-peer/setup.sh", True),
        ("--scratch /tmp/equal_budget_check", True),
        ("/home/me/autoseg_work/report.html", True),
        ("/Users/me/data", True),
        ("the device notes in .library/device", True),
        ("autoseg train /data/Dataset004_Hippocampus", False),
        ("a scratch folder under /tmp, by its name", False),
        ("~/.cache/autoseg/throughput and ../shared/datasets", False),
        ('TEMPORARY=${TMPDIR:-/tmp}', False),
        ("/proc/cpuinfo, /dev/shm, /usr/bin/chromium", False),
        ("https://example.org/work/page and autoseg_work/plans.json", False),
    ],
)
def test_the_check_refuses_machine_folders_and_leaves_generic_examples(line: str, refused: bool) -> None:
    assert bool(machine_paths(REPOSITORY / "example.md", [line])) is refused
