"""-b and --list-boots, against journalctl reading the same entries (via journal-remote)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import Run, objects
from tests.journal.test_export import JOURNAL_REMOTE

BOOTS = ["1" * 32, "2" * 32, "3" * 32]


@pytest.fixture
def three_boots(tmp_path: Path) -> Path:
    """A node that restarted twice: three boots, a few lines each, in two segments or more."""
    data_dir = tmp_path / "node"
    for n, boot in enumerate(BOOTS):
        with JournalWriter(
            data_dir, hostname="h", machine_id="ab" * 16, boot_id=boot, max_bytes=1 << 17
        ) as writer:
            for i in range(40 + 10 * n):
                writer.line(
                    b"boot %d line %d" % (n, i), unit="web.service", identifier="web", pid=7
                )
    return data_dir


def journalctl(in_process: Run, data_dir: Path, tmp_path: Path, *flags: str) -> bytes:
    target = tmp_path / "remote.journal"
    if not target.exists():
        export = in_process("journal", "--data-dir", str(data_dir), "-o", "export").stdout
        subprocess.run(
            [JOURNAL_REMOTE, "-o", str(target), "-"], input=export, check=True, capture_output=True
        )
    read = subprocess.run(
        ["journalctl", "--file", str(target), "--no-pager", *flags],
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert read.returncode == 0, read.stderr
    return read.stdout


def test_list_boots_is_journalctls(three_boots: Path, in_process: Run, tmp_path: Path) -> None:
    ours = in_process("journal", "--data-dir", str(three_boots), "--list-boots")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == journalctl(in_process, three_boots, tmp_path, "--list-boots")
    assert [line.split()[1] for line in ours.stdout.splitlines()[1:]] == [b.encode() for b in BOOTS]


@pytest.mark.parametrize(
    "boot", ["1", "2", "3", "-1", "-2", BOOTS[0], f"{BOOTS[0]}+1", f"{BOOTS[2]}-2"]
)
def test_a_boot_shows_what_journalctl_shows(
    three_boots: Path, in_process: Run, tmp_path: Path, boot: str
) -> None:
    flags = ["-b", boot, "-o", "json"]
    ours = in_process("journal", "--data-dir", str(three_boots), *flags)
    assert ours.returncode == 0, ours.stderr
    theirs = journalctl(in_process, three_boots, tmp_path, *flags)
    assert objects(ours.stdout) == objects(theirs) != []


def test_b_alone_is_the_newest_boot(three_boots: Path, in_process: Run) -> None:
    ours = in_process("journal", "--data-dir", str(three_boots), "-b", "-n", "all", "-o", "cat")
    assert ours.stdout.splitlines() == [b"boot 2 line %d" % i for i in range(60)]
    last = in_process("journal", "--data-dir", str(three_boots), "-b", "0", "-u", "web", "-n", "1")
    assert last.stdout.endswith(b"boot 2 line 59\n")


def test_a_boot_that_is_not_there_is_an_error(three_boots: Path, in_process: Run) -> None:
    for boot in ("4", "-3", "f" * 32, "nonsense"):
        result = in_process("journal", "--data-dir", str(three_boots), "-b", boot)
        assert result.returncode == 1 and b"boot" in result.stderr, boot
