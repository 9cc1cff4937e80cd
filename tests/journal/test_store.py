"""The journal store: what the writer records, rotation under the cap, torn tails, many writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clustertui.backend.journal import store
from clustertui.backend.journal.fmt import record_fields
from clustertui.backend.journal.reader import Journal, Query
from clustertui.backend.journal.writer import JournalWriter
from tests.harness.procs import REPO
from tests.journal.conftest import clusterd


def entries(data_dir: Path) -> list[store.Record]:
    return [record for batch in Journal(data_dir).forward(Query()) for record in batch]


def messages(data_dir: Path) -> list[bytes]:
    return [record_fields(record)["MESSAGE"] for record in entries(data_dir)]


def test_each_line_carries_journald_fields(writer: JournalWriter, tmp_path: Path) -> None:
    writer.line(b"hello", unit="web.service", identifier="web", pid=42)
    writer.flush()
    (record,) = entries(tmp_path)
    fields = record_fields(record)
    assert fields == {
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"web",
        "_PID": b"42",
        "_SYSTEMD_UNIT": b"web.service",
        "_TRANSPORT": b"stdout",
        "_BOOT_ID": b"cd" * 16,
        "_MACHINE_ID": b"ab" * 16,
        "_HOSTNAME": b"node-1",
        "MESSAGE": b"hello",
    }
    seqnum, realtime, monotonic, priority, _flags, _body = record
    assert seqnum == 1 and priority == 6
    assert abs(realtime / 1e6 - time.time()) < 60 and monotonic > 0


def test_a_level_prefix_sets_the_priority_and_is_removed(
    writer: JournalWriter, tmp_path: Path
) -> None:
    for line in (b"<3>disk on fire", b"<007>debug talk", b"<9>not a level", b"plain"):
        writer.line(line, unit="u.service", identifier="u", pid=1)
    writer.line(b"<2>kept as text", unit="u.service", identifier="u", pid=1, level_prefix=False)
    writer.flush()
    got = [(r[3], record_fields(r)["MESSAGE"]) for r in entries(tmp_path)]
    assert got == [
        (3, b"disk on fire"),
        (7, b"debug talk"),
        (6, b"<9>not a level"),
        (6, b"plain"),
        (6, b"<2>kept as text"),
    ]


def test_feed_splits_lines_and_keeps_each_streams_partial_line(
    writer: JournalWriter, tmp_path: Path
) -> None:
    common = {"unit": "u.service", "identifier": "u", "pid": 7}
    writer.feed(b"one\ntw", stream="stdout", **common)
    writer.feed(b"err-a", stream="stderr", **common)
    writer.feed(b"o\nthree", stream="stdout", **common)
    writer.feed(b"\n", stream="stderr", **common)
    writer.feed(b"", stream="stdout", **common)
    writer.flush()
    assert messages(tmp_path) == [b"one", b"two", b"err-a", b"three"]


def test_binary_and_unprintable_messages_are_stored_as_byte_arrays(
    writer: JournalWriter, tmp_path: Path
) -> None:
    writer.line(b"bad \xff utf8", unit=None, identifier="x", pid=None)
    writer.line(b"bell\x07", unit=None, identifier="x", pid=None)
    writer.line(b"c1 \xc2\x85", unit=None, identifier="x", pid=None)
    # Tab and newline count as printable, as in systemd's utf8_is_printable().
    writer.line(b"tab\there", unit=None, identifier="x", pid=None)
    writer.line("ünïcode fine".encode(), unit=None, identifier="x", pid=None)
    writer.flush()
    bodies = [json.loads(b"{" + r[5] + b"}")["MESSAGE"] for r in entries(tmp_path)]
    assert bodies == [
        list(b"bad \xff utf8"),
        list(b"bell\x07"),
        list(b"c1 \xc2\x85"),
        "tab\there",
        "ünïcode fine",
    ]


def test_rotation_keeps_the_journal_under_its_cap(tmp_path: Path) -> None:
    cap = 64 * 1024
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32, max_bytes=cap) as writer:
        for i in range(4000):
            writer.line(b"line %06d " % i + b"x" * 60, unit="u.service", identifier="u", pid=1)
            if i % 500 == 0:
                writer.flush()
    segments = store.list_segments(tmp_path / "journal")
    assert len(segments) > 2
    assert sum(path.stat().st_size for path in segments) <= cap
    seqnums = [record[0] for record in entries(tmp_path)]
    assert seqnums == list(range(seqnums[0], 4001))
    assert seqnums[0] > 1
    assert messages(tmp_path)[-1].startswith(b"line 003999 ")


def test_a_torn_tail_is_skipped_on_read_and_cut_by_the_next_writer(tmp_path: Path) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        for text in (b"first", b"second", b"third"):
            writer.line(text, unit=None, identifier="t", pid=1)
            writer.flush()
    (segment,) = store.list_segments(tmp_path / "journal")
    data = segment.read_bytes()
    # Cut the last write in half, as a crash in the middle of write() leaves it.
    segment.write_bytes(data[: len(data) - 20])
    assert messages(tmp_path) == [b"first", b"second"]

    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        writer.line(b"after the crash", unit=None, identifier="t", pid=1)
    assert messages(tmp_path) == [b"first", b"second", b"after the crash"]
    assert [record[0] for record in entries(tmp_path)] == [1, 2, 3]


def _cat(
    data_dir: Path, identifier: str, *command: str, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    """`clusterd cat -t IDENTIFIER` into ``data_dir`` as a real process: logging ``command``'s
    output, or its own stdin without one."""
    argv = [sys.executable, "-m", "clustertui.backend.daemon", "cat"]
    argv += ["--data-dir", str(data_dir), "-t", identifier]
    if command:
        argv += ["--", *command]
    return subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=stdin
    )


def test_a_writer_killed_mid_stream_leaves_older_entries_intact(tmp_path: Path) -> None:
    writer = _cat(tmp_path, "w", stdin=subprocess.PIPE)
    assert writer.stdin is not None
    try:
        for i in range(20000):
            writer.stdin.write(b"entry %d\n" % i)
        writer.stdin.flush()
        # Wait until some entries are on disk, then kill it while it is still writing.
        deadline = time.monotonic() + 10
        while not entries(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait()
        writer.stdin.close()
    survived = messages(tmp_path)
    assert survived, "nothing reached the journal before the kill"
    assert survived == [b"entry %d" % i for i in range(len(survived))]
    result = clusterd("journal", "--data-dir", str(tmp_path), "-o", "cat", "-n", "1")
    assert result.returncode == 0 and result.stdout == survived[-1] + b"\n"


def test_concurrent_writers_share_one_sequence(tmp_path: Path) -> None:
    procs = [
        _cat(
            tmp_path,
            f"w{n}",
            sys.executable,
            "-c",
            f"import sys\nfor i in range(3000): print('w{n}', i)",
        )
        for n in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    records = entries(tmp_path)
    assert [record[0] for record in records] == list(range(1, 9001))
    for n in range(3):
        mine = [m for m in messages(tmp_path) if m.startswith(b"w%d " % n)]
        assert mine == [b"w%d %d" % (n, i) for i in range(3000)]


def test_lines_reach_the_file_without_an_explicit_flush(
    writer: JournalWriter, tmp_path: Path
) -> None:
    writer.line(b"soon", unit=None, identifier="t", pid=1)
    deadline = time.monotonic() + 1.0
    while not entries(tmp_path):
        assert time.monotonic() < deadline, "the writer kept the line for over a second"
        time.sleep(0.005)
    assert messages(tmp_path) == [b"soon"]
