"""`clusterd journal -o export`: journald's export format, read back by systemd's own tools."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from clustertui.backend.journal.fmt import parse_export
from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import UNCOMPARABLE, Run, objects

# Debian ships it outside PATH; tests/install-components.sh installs the package.
JOURNAL_REMOTE = shutil.which("systemd-journal-remote") or "/lib/systemd/systemd-journal-remote"

# Values that take export's binary form (newlines, control bytes, bad UTF-8) or test its
# edges (empty, tab, long, repeated, a value that looks like another field).
TRICKY: list[list[tuple[str, bytes]]] = [
    [("MESSAGE", b"plain"), ("PRIORITY", b"6"), ("SYSLOG_IDENTIFIER", b"t")],
    [("MESSAGE", b"two\nlines"), ("PRIORITY", b"3"), ("SYSLOG_IDENTIFIER", b"t")],
    [("MESSAGE", b"bad \xff utf-8"), ("SYSLOG_IDENTIFIER", b"t")],
    [("MESSAGE", b"bell\x07"), ("EMPTY", b""), ("TABBED", b"a\tb")],
    [("MESSAGE", b"ends with newline\n"), ("LONG", b"q" * 5000)],
    [("MESSAGE", b"\nMESSAGE=forged\n"), ("NUL", b"a\x00b"), ("UNICODE", "ü—ok".encode())],
]
REPEATED = [("MESSAGE", b"repeats"), ("TAG", b"one"), ("TAG", b"two\nlines"), ("TAG", b"3")]


def _written(data_dir: Path, entries: list[list[tuple[str, bytes]]]) -> None:
    with JournalWriter(data_dir, hostname="h", machine_id="ab" * 16) as writer:
        for number, fields in enumerate(entries, 1):
            boot = [("_BOOT_ID", b"cd" * 16)]
            writer.append(boot + fields, realtime=1_700_000_000_000_000 + number, monotonic=number)


def _ours(in_process: Run, data_dir: Path, *flags: str) -> bytes:
    result = in_process("journal", "--data-dir", str(data_dir), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _comparable(entries: list[list[tuple[str, bytes]]]) -> list[Counter[tuple[str, bytes]]]:
    return [Counter(pair for pair in entry if pair[0] not in UNCOMPARABLE) for entry in entries]


def _through_journal_remote(export: bytes, tmp_path: Path, *flags: str) -> bytes:
    """``export`` written into a journal file by systemd-journal-remote, read by journalctl."""
    if not Path(JOURNAL_REMOTE).exists():
        raise RuntimeError("systemd-journal-remote is not installed: run `make test`, which does")
    target = tmp_path / "remote.journal"
    written = subprocess.run(
        [JOURNAL_REMOTE, "-o", str(target), "-"], input=export, capture_output=True, timeout=60
    )
    assert written.returncode == 0, written.stderr
    assert b"ignoring" not in written.stderr, written.stderr  # every line of ours understood
    read = subprocess.run(
        ["journalctl", "--file", str(target), "--no-pager", *flags],
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert read.returncode == 0, read.stderr
    return read.stdout


def test_export_round_trips_through_parse_export(tmp_path: Path, in_process: Run) -> None:
    _written(tmp_path, [*TRICKY, REPEATED])
    entries = list(parse_export(_ours(in_process, tmp_path, "-o", "export")))
    assert [[p for p in e if not p[0].startswith("__")] for e in entries] == [
        [("_BOOT_ID", b"cd" * 16), *fields] for fields in [*TRICKY, REPEATED]
    ]
    first = dict(entries[0])
    assert first["__REALTIME_TIMESTAMP"] == b"1700000000000001"
    assert first["__MONOTONIC_TIMESTAMP"] == b"1"
    assert first["__CURSOR"].startswith(b"s=")


def test_export_writes_text_fields_as_lines_and_others_binary(
    tmp_path: Path, in_process: Run
) -> None:
    _written(tmp_path, TRICKY[1:4])
    out = _ours(in_process, tmp_path, "-o", "export", "-n", "3")
    assert b"\nMESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n" in out
    assert b"\nMESSAGE\n" + struct.pack("<Q", 11) + b"bad \xff utf-8\n" in out
    assert b"\nMESSAGE\n" + struct.pack("<Q", 5) + b"bell\x07\n" in out
    assert b"\nEMPTY=\nTABBED=a\tb\n" in out
    assert b"\nPRIORITY=3\nSYSLOG_IDENTIFIER=t\n\n__CURSOR=" in out
    # Every entry, the last included, ends with an empty line.
    assert out.count(b"\n\n__CURSOR=") == 2 and out.endswith(b"\nTABBED=a\tb\n\n")


def test_systemd_journal_remote_stores_our_export_as_journald_would(
    fixture_journal: Path, tmp_path: Path, in_process: Run
) -> None:
    export = _ours(in_process, fixture_journal, "-o", "export")
    theirs = _through_journal_remote(export, tmp_path, "-o", "json", "--all")
    assert objects(theirs) == objects(_ours(in_process, fixture_journal, "-o", "json", "--all"))


def test_systemd_journal_remote_keeps_every_tricky_value(tmp_path: Path, in_process: Run) -> None:
    data_dir = tmp_path / "data"
    _written(data_dir, [*TRICKY, REPEATED])
    export = _ours(in_process, data_dir, "-o", "export")
    # journalctl's own export of the file journal-remote wrote: every value byte for byte.
    # journald orders an entry's fields by where their data sits in its file, so compare sets.
    theirs = _through_journal_remote(export, tmp_path, "-o", "export", "--all")
    assert _comparable(list(parse_export(theirs))) == _comparable(list(parse_export(export)))


@pytest.mark.parametrize(
    ("flags", "messages"),
    [
        (["-n", "2", "-r"], [b"ends with newline\n", b"\nMESSAGE=forged\n"][::-1]),
        (["-p", "err"], [b"two\nlines"]),
        (["-g", "utf"], [b"bad \xff utf-8"]),
        (["TABBED=a\tb"], [b"bell\x07"]),
    ],
)
def test_export_takes_the_same_filters_as_every_format(
    tmp_path: Path, in_process: Run, flags: list[str], messages: list[bytes]
) -> None:
    _written(tmp_path, TRICKY)
    out = _ours(in_process, tmp_path, "-o", "export", *flags)
    assert [dict(entry)["MESSAGE"] for entry in parse_export(out)] == messages


def test_export_cursor_resumes_with_after_cursor(tmp_path: Path, in_process: Run) -> None:
    _written(tmp_path, TRICKY)
    out = _ours(in_process, tmp_path, "-o", "export", "-n", "2", "--show-cursor")
    body, _, tail = out.rpartition(b"-- cursor: ")
    first, last = parse_export(body)
    assert tail.rstrip(b"\n") == dict(last)["__CURSOR"]
    cursor = dict(first)["__CURSOR"].decode()
    rest = _ours(in_process, tmp_path, "-o", "export", "--after-cursor", cursor)
    assert list(parse_export(rest)) == [last]


def test_an_unknown_format_is_refused_with_the_list_of_formats(journal: Run) -> None:
    result = journal("-o", "xml")
    assert result.returncode == 2
    assert b"invalid choice: 'xml'" in result.stderr and b"export" in result.stderr
    assert result.stdout == b""
