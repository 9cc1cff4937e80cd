"""`clusterd journal -o verbose`: every field of each entry, laid out as journalctl does."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import Run

REALTIME = 1_764_237_601_000_003  # Thu 2025-11-27 10:00:01.000003 UTC
FIELDS = [
    ("_BOOT_ID", b"cd" * 16),
    ("PRIORITY", b"6"),
    ("MESSAGE", b"first line\nsecond line\n"),
    ("BINARY", b"bad \xff utf-8"),
    ("CONTROL", b"bell\x07 and \x1b[31mred\x1b[0m"),
    ("TABBED", b"a\tb"),
    ("EMPTY", b""),
    ("LONG", b"z" * 5000),
    ("TAG", b"one"),
    ("TAG", b"two"),
]
CURSOR = re.compile(rb"^(.*) \[(s=[0-9a-f]+;i=1;t=[0-9a-f]+)\]$")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16) as writer:
        writer.append(FIELDS, realtime=REALTIME, monotonic=5)
    return tmp_path


def _verbose(in_process: Run, data_dir: Path, *flags: str) -> list[bytes]:
    result = in_process("journal", "--data-dir", str(data_dir), "-o", "verbose", *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout.split(b"\n")


def test_verbose_shows_every_field_indented_under_a_dated_cursor_line(
    in_process: Run, data_dir: Path
) -> None:
    first, *rest = _verbose(in_process, data_dir)
    header = CURSOR.match(first)
    assert header is not None, first
    assert header.group(1) == b"Thu 2025-11-27 10:00:01.000003 UTC"
    assert rest == [
        b"    _BOOT_ID=" + b"cd" * 16,
        b"    PRIORITY=6",
        # Further lines line up under the first; the final newline adds no empty line.
        b"    MESSAGE=first line",
        b"            second line",
        b"    BINARY=[11B blob data]",
        b"    CONTROL=[22B blob data]",
        b"    TABBED=a\tb",
        b"    EMPTY=",
        b"    LONG=" + b"z" * 5000,
        b"    TAG=one",
        b"    TAG=two",
        b"",
    ]


def test_verbose_all_prints_unprintable_values_as_they_are(in_process: Run, data_dir: Path) -> None:
    lines = _verbose(in_process, data_dir, "--all")
    assert b"    BINARY=bad \xff utf-8" in lines
    assert b"    CONTROL=bell\x07 and \x1b[31mred\x1b[0m" in lines
    assert len(lines) == 13


def test_verbose_dates_an_entry_by_its_senders_clock_in_the_local_zone(
    in_process: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16) as writer:
        source = str(REALTIME - 1_500_000).encode()
        writer.append(
            [("MESSAGE", b"m"), ("_SOURCE_REALTIME_TIMESTAMP", source)], realtime=REALTIME
        )
        writer.append([("MESSAGE", b"m")], realtime=0)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    lines = _verbose(in_process, tmp_path)
    assert lines[0].startswith(b"Thu 2025-11-27 18:59:59.500003 JST [s=")
    assert lines[3].startswith(b"--- XXXX-XX-XX XX:XX:XX UTC [s=")
    utc = _verbose(in_process, tmp_path, "--utc")
    assert utc[0].startswith(b"Thu 2025-11-27 09:59:59.500003 UTC [s=")


def test_verbose_cursor_is_the_one_after_cursor_takes(in_process: Run, data_dir: Path) -> None:
    header = CURSOR.match(_verbose(in_process, data_dir)[0])
    assert header is not None
    after = in_process(
        "journal",
        "--data-dir",
        str(data_dir),
        "-o",
        "verbose",
        "--after-cursor",
        header.group(2).decode(),
        "-q",
    )
    assert after.returncode == 0 and after.stdout == b""
    again = in_process(
        "journal",
        "--data-dir",
        str(data_dir),
        "-o",
        "verbose",
        "--cursor",
        header.group(2).decode(),
    )
    assert again.stdout.split(b"\n") == _verbose(in_process, data_dir)
