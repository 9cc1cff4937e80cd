"""`clusterd journal` is a light command: it imports the journal modules and little else."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from clustertui.backend.journal.writer import JournalWriter
from tests.harness.procs import REPO

# What the reader may import beyond a bare interpreter's start-up, by top-level name. Grow
# this list only on purpose: each entry is paid by every `clusterctl status` and every
# journal pane the console opens.
ALLOWED_STDLIB = {
    "_bisect",
    "_json",
    "_locale",
    "_struct",
    "argparse",
    "array",
    "bisect",
    "collections",
    "fnmatch",
    "gettext",
    "json",
    "locale",
    "mmap",
    "re",
    "runpy",
    "select",
    "signal",
    "struct",
    "zlib",
}
JOURNAL_MODULES = {
    "clustertui",
    "clustertui.backend",
    "clustertui.backend.daemon",
    "clustertui.backend.journal",
} | {f"clustertui.backend.journal.{name}" for name in ("cli", "fmt", "index", "reader", "store")}
NEVER = ("grpc", "google", "aetcd", "asyncio", "concurrent", "ssl", "dataclasses", "inspect")


def imported(*argv: str) -> set[str]:
    """The modules ``python -X importtime ARGV`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = set()
    for line in result.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def a_journal(data_dir: Path, count: int) -> None:
    with JournalWriter(data_dir, hostname="h", machine_id="ab" * 16) as writer:
        for i in range(count):
            writer.line(b"line %d" % i, unit=f"web{i % 5}.service", identifier="web", pid=i % 5)


def test_the_reader_imports_only_the_journal_modules(tmp_path: Path) -> None:
    a_journal(tmp_path, 100)
    bare = imported("-c", "pass")
    for argv in (
        ["-n", "1"],
        ["-u", "web1", "-n", "10", "-o", "json"],
        ["-g", "line 9", "-p", "info", "-o", "verbose"],
        ["-S", "today", "-r", "-o", "export"],
    ):
        used = imported(
            "-m", "clustertui.backend.daemon", "journal", "--data-dir", str(tmp_path), *argv
        )
        added = used - bare
        assert not [name for name in added if name.split(".")[0] in NEVER], argv
        outside = {
            name
            for name in added
            if name not in JOURNAL_MODULES and name.split(".")[0] not in ALLOWED_STDLIB
        }
        assert not outside, f"{argv}: the reader now imports {sorted(outside)}"


CAT = [sys.executable, "-X", "importtime", "-m", "clustertui.backend.daemon", "cat"]


def test_cat_imports_no_server_machinery(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CAT, "--data-dir", str(tmp_path), "-t", "probe"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        input=b"one line\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert not [name for name in names if name.split(".")[0] in NEVER]
    assert "clustertui.backend.journal.writer" in names


def best_of(argv: list[str], runs: int) -> float:
    """The least CPU time (user + system) of ``runs`` runs of ``argv``: on a machine shared
    with other work, CPU time is what start-up costs; wall time is what the others cost."""
    best = float("inf")
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, check=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        best = min(best, cpu)
    return best


def test_the_reader_starts_within_three_times_a_bare_interpreter(tmp_path: Path) -> None:
    a_journal(tmp_path, 3000)
    reader = [
        sys.executable,
        "-m",
        "clustertui.backend.daemon",
        "journal",
        "--data-dir",
        str(tmp_path),
    ]
    bare = [sys.executable, "-c", "pass"]
    theirs = best_of(bare, 5)
    ours = best_of([*reader, "-n", "1"], 5)
    assert ours <= 3 * theirs, f"-n 1: {ours * 1000:.0f} ms, python: {theirs * 1000:.0f} ms"
    filtered = best_of([*reader, "-u", "web3", "-n", "10"], 5)
    assert filtered <= 3 * theirs, f"-u web3 -n 10: {filtered * 1000:.0f} ms"
