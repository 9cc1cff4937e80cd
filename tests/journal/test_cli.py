"""`clusterd journal` flags with journalctl's meanings, and `clusterd cat` as systemd-cat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clustertui.backend.journal.cli import UsageError, parse_priorities, parse_time
from clustertui.backend.journal.fmt import parse_json
from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import FIXTURES, Run, clusterd


def test_without_n_every_entry_is_shown_and_bare_n_means_ten(journal: Run) -> None:
    assert len(journal("-o", "cat").stdout.splitlines()) == 13
    assert journal("-o", "cat", "-n", "all").stdout == journal("-o", "cat").stdout
    bare = journal("-o", "cat", "-n").stdout.splitlines()
    # Ten entries; the ninth of the twelve holds two lines.
    assert bare[0] == b"Ready to accept connections" and len(bare) == 11
    assert journal("-o", "cat", "-n", "0").stdout == b""


def test_priority_ranges_include_both_ends_in_either_order(journal: Run) -> None:
    expected = b"Error: connection refused\nwarning: slow response 1200 ms\n"
    assert journal("-o", "cat", "-p", "warning..err").stdout == expected
    assert journal("-o", "cat", "-p", "3..4").stdout == expected
    assert journal("-o", "cat", "-p", "crit").stdout == b"critical: disk full\n"


def test_since_and_until_take_absolute_times(journal: Run) -> None:
    result = journal("-o", "cat", "-S", "2025-11-27 10:00:04", "-U", "2025-11-27 10:00:06")
    assert result.stdout == b"Error: connection refused\nwarning: slow response 1200 ms\n"
    assert journal("-o", "cat", "--since", "today", "-q").stdout == b""


def test_after_cursor_resumes_where_show_cursor_left_off(journal: Run) -> None:
    first = journal("-o", "cat", "-U", "2025-11-27 10:00:11", "--show-cursor").stdout
    *shown, last = first.splitlines()
    assert shown[-1] == b"critical: disk full"
    assert last.startswith(b"-- cursor: ")
    cursor = last.removeprefix(b"-- cursor: ").decode()
    rest = journal("-o", "cat", "--after-cursor", cursor).stdout
    assert rest == "unicode: Привет, мир — ok\n".encode() + b"x" * 5000 + b"\n"
    again = journal("-o", "cat", "--cursor", cursor).stdout
    assert again == b"critical: disk full\n" + rest


def test_json_cursor_is_the_one_after_cursor_takes(journal: Run) -> None:
    line = journal("-o", "json", "-n", "2").stdout.splitlines()[0]
    cursor = parse_json(line)["__CURSOR"].decode()
    assert journal("-o", "cat", "--after-cursor", cursor).stdout == b"x" * 5000 + b"\n"


def test_several_units_and_globs_are_or_ed(journal: Run) -> None:
    out = journal("-o", "cat", "-u", "redis", "-u", "etcd.service").stdout.splitlines()
    assert out == [
        b"Ready to accept connections",
        b"Error: connection refused",
        b'{"level":"info","msg":"ready to serve client requests"}',
    ]
    assert journal("-o", "cat", "-u", "redi*").stdout.splitlines() == out[:2]


def test_identifiers_and_field_matches_narrow_the_entries(journal: Run) -> None:
    assert journal("-o", "cat", "-t", "redis-server", "-p", "err").stdout == (
        b"Error: connection refused\n"
    )
    assert journal("-o", "cat", "_PID=1003", "_PID=1006").stdout == (
        b'Ready to accept connections\n{"level":"info","msg":"ready to serve client requests"}\n'
    )
    assert journal("-o", "cat", "_PID=1003", "SYSLOG_IDENTIFIER=etcd", "-q").stdout == b""
    bad = journal("pid=3")
    assert bad.returncode == 1 and b"is not a FIELD=VALUE match" in bad.stderr


def test_grep_with_capitals_is_case_sensitive_unless_told(journal: Run) -> None:
    assert journal("-o", "cat", "-g", "Error").stdout == b"Error: connection refused\n"
    told = journal("-o", "cat", "-g", "ERROR", "--case-sensitive=no").stdout
    assert told == b"Error: connection refused\n"


def test_an_empty_result_says_so_on_stderr(journal: Run) -> None:
    result = journal("-u", "nothing.service")
    assert result.returncode == 0
    assert result.stdout == b""
    assert result.stderr == b"-- No entries --\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-p", "loud"], b"unknown priority 'loud'"),
        (["-S", "whenever"], b"is not a time"),
        (["--after-cursor", "garbage"], b"is not a journal cursor"),
        (["-g", "("], b"bad --grep pattern"),
        (["-f", "-r"], b"cannot be combined"),
    ],
)
def test_bad_flags_get_a_clear_error(journal: Run, flags: list[str], message: bytes) -> None:
    result = journal(*flags)
    assert result.returncode == 1
    assert message in result.stderr
    assert b"Traceback" not in result.stderr


def test_relative_and_named_times() -> None:
    now = time.mktime((2026, 1, 2, 10, 30, 0, 0, 0, -1))
    today = int(time.mktime((2026, 1, 2, 0, 0, 0, 0, 0, -1)) * 1e6)
    assert parse_time("today", now) == today
    assert parse_time("yesterday", now) == today - 86_400_000_000
    assert parse_time("-1h", now) == int(now * 1e6) - 3_600_000_000
    assert parse_time("1h 30min ago", now) == int(now * 1e6) - 5_400_000_000
    assert parse_time("2026-01-02 10:00:00", now) == today + 36_000_000_000
    assert parse_time("@1700000000") == 1_700_000_000_000_000
    with pytest.raises(UsageError):
        parse_time("-1 fortnight", now)


def test_priority_names_cover_syslog_levels() -> None:
    assert parse_priorities("err") == frozenset({0, 1, 2, 3})
    assert parse_priorities("debug") == frozenset(range(8))
    assert parse_priorities("info..notice") == frozenset({5, 6})


def test_cat_records_stdin_with_its_identifier_unit_and_priority(
    tmp_path: Path, in_process: Run
) -> None:
    result = clusterd(
        "cat",
        "--data-dir",
        str(tmp_path),
        "-t",
        "backup",
        "-u",
        "backup.service",
        "-p",
        "warning",
        input=b"starting\n<2>tape jammed\n",
    )
    assert result.returncode == 0, result.stderr
    out = in_process("journal", "--data-dir", str(tmp_path), "-o", "json").stdout.splitlines()
    entries = [parse_json(line) for line in out]
    assert [(e["MESSAGE"], e["PRIORITY"]) for e in entries] == [
        (b"starting", b"4"),
        (b"tape jammed", b"2"),
    ]
    assert {e["SYSLOG_IDENTIFIER"] for e in entries} == {b"backup"}
    assert {e["_SYSTEMD_UNIT"] for e in entries} == {b"backup.service"}


def test_cat_runs_a_command_records_both_streams_and_returns_its_status(
    tmp_path: Path, in_process: Run
) -> None:
    result = clusterd(
        "cat",
        "--data-dir",
        str(tmp_path),
        "--stderr-priority",
        "err",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    )
    assert result.returncode == 3
    out = in_process("journal", "--data-dir", str(tmp_path), "-o", "json").stdout.splitlines()
    got = sorted(
        (e["MESSAGE"], e["PRIORITY"], e["SYSLOG_IDENTIFIER"]) for e in map(parse_json, out)
    )
    assert got == [(b"to-err", b"3", b"sh"), (b"to-out", b"6", b"sh")]


def test_cat_reports_a_missing_command(tmp_path: Path) -> None:
    result = clusterd("cat", "--data-dir", str(tmp_path), "--", "/no/such/program")
    assert result.returncode == 127
    assert b"cannot run /no/such/program" in result.stderr


def test_long_fields_are_null_in_json_unless_all(tmp_path: Path, in_process: Run) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        writer.line(b"y" * 4096, unit=None, identifier="t", pid=1)
        writer.line(b"y" * 4095, unit=None, identifier="t", pid=1)
    plain = in_process("journal", "--data-dir", str(tmp_path), "-o", "json").stdout.splitlines()
    assert [parse_json(line)["MESSAGE"] for line in plain] == [None, b"y" * 4095]
    full = in_process("journal", "--data-dir", str(tmp_path), "-o", "json", "-a").stdout
    assert parse_json(full.splitlines()[0])["MESSAGE"] == b"y" * 4096


def test_show_cursor_names_the_last_entry_printed_even_in_reverse(journal: Run) -> None:
    *shown, last = journal("-o", "cat", "-r", "-n", "2", "--show-cursor").stdout.splitlines()
    assert shown[-1].startswith(b"unicode: ")
    cursor = last.removeprefix(b"-- cursor: ").decode()
    assert journal("-o", "cat", "--after-cursor", cursor).stdout == b"x" * 5000 + b"\n"


def test_utc_shows_utc_whatever_the_local_zone(
    journal: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    local = journal("-o", "short-iso", "-n", "1").stdout
    assert local.startswith(b"2025-11-27T19:00:12+0900 ")
    utc = journal("-o", "short-iso", "--utc").stdout
    assert utc == (FIXTURES / "out.short-iso").read_bytes()


def test_all_prints_unprintable_messages_instead_of_blob_notes(journal: Run) -> None:
    lines = journal("-o", "short", "-a", "_PID=1007", "_PID=1008").stdout.splitlines()
    assert lines == [
        b"Nov 27 10:00:07 node-1 hello[1007]: binary \xff\xfe bytes",
        b"Nov 27 10:00:08 node-1 hello[1008]: bell\x07 and escape \x1b[31mred\x1b[0m",
    ]
