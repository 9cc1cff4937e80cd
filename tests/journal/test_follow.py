"""`clusterd journal -f`: new entries as they come, across rotation, and a clean exit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clustertui.backend.journal import store
from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import Follower, Run

Follow = Callable[..., Follower]


def write(writer: JournalWriter, *lines: bytes) -> None:
    for line in lines:
        writer.line(line, unit="app.service", identifier="app", pid=5)
    writer.flush()


def test_follow_prints_the_last_ten_then_new_entries_as_they_come(
    writer: JournalWriter, tmp_path: Path, follow: Follow
) -> None:
    write(writer, *(b"old %d" % i for i in range(15)))
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(10) == [b"old %d" % i for i in range(5, 15)]
    write(writer, b"new one")
    assert follower.read_lines(1) == [b"new one"]
    # Without flush(): the writer's own thread gets it out within milliseconds.
    writer.line(b"unflushed", unit="app.service", identifier="app", pid=5)
    assert follower.read_lines(1, timeout=2) == [b"unflushed"]


def test_follow_applies_the_filters_to_new_entries(
    writer: JournalWriter, tmp_path: Path, follow: Follow
) -> None:
    follower = follow(tmp_path, "-o", "cat", "-u", "db", "-p", "err")
    writer.line(b"<3>app broke", unit="app.service", identifier="app", pid=5)
    writer.line(b"<6>db fine", unit="db.service", identifier="db", pid=6)
    writer.line(b"<2>db broke", unit="db.service", identifier="db", pid=6)
    writer.flush()
    assert follower.read_lines(1) == [b"db broke"]


def test_follow_waits_for_a_journal_that_does_not_exist_yet(tmp_path: Path, follow: Follow) -> None:
    follower = follow(tmp_path / "node", "-o", "short")
    with JournalWriter(tmp_path / "node", hostname="n1", machine_id="0" * 32) as writer:
        # The follower may still be starting: keep writing until it shows something.
        write(writer, b"first words")
        (line,) = follower.read_lines(1)
    assert line.endswith(b" n1 app[5]: first words")


def test_follow_survives_rotation(tmp_path: Path, follow: Follow) -> None:
    # Segments of 64 KiB; the cap holds all ~270 KB written, so even a follower slowed
    # down by a busy machine loses nothing to deletion (journalctl would lose it too).
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32, max_bytes=512 * 1024) as w:
        write(w, b"before")
        follower = follow(tmp_path, "-o", "cat")
        assert follower.read_lines(1) == [b"before"]
        expected = []
        for batch in range(20):
            lines = [b"batch %02d line %03d " % (batch, i) + b"z" * 40 for i in range(50)]
            write(w, *lines)
            expected += lines
        assert len(store.list_segments(tmp_path / "journal")) > 3
        assert follower.read_lines(len(expected), timeout=30) == expected


def test_follow_skips_a_torn_tail_until_a_writer_replaces_it(
    writer: JournalWriter, tmp_path: Path, follow: Follow
) -> None:
    write(writer, b"whole")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"whole"]
    (segment,) = store.list_segments(tmp_path / "journal")
    fields = b'"MESSAGE":"half of it"'
    header = store.RECORD.pack(store.RECORD.size - 4 + len(fields), 99, 1, 1, 6, 0)
    torn = store.frame([header, fields])[:-7]
    with segment.open("ab") as f:
        f.write(torn)
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as other:
        write(other, b"after the torn tail")
    assert follower.read_lines(1) == [b"after the torn tail"]


def test_follow_exits_cleanly_on_sigterm(tmp_path: Path, follow: Follow) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        write(writer, b"hello")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"hello"]
    follower.process.send_signal(signal.SIGTERM)
    assert follower.process.wait(timeout=10) == 0
    assert follower.process.stderr.read() == b""


def test_follow_exits_when_its_reader_closes_the_pipe_even_if_idle(
    tmp_path: Path, follow: Follow
) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        write(writer, b"hello")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"hello"]
    follower.stdout.close()
    assert follower.process.wait(timeout=10) == 0
    assert follower.process.stderr.read() == b""


def test_follow_exits_quietly_on_a_broken_pipe_while_writing(
    writer: JournalWriter, tmp_path: Path, follow: Follow
) -> None:
    write(writer, b"hello")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"hello"]
    follower.stdout.close()
    write(writer, *(b"more %d" % i for i in range(1000)))
    assert follower.process.wait(timeout=10) == 0
    assert b"Traceback" not in follower.process.stderr.read()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_an_idle_follower_does_not_spin(tmp_path: Path, follow: Follow) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        write(writer, b"hello")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"hello"]
    before = _cpu_ticks(follower.process.pid)
    time.sleep(1.0)
    used = _cpu_ticks(follower.process.pid) - before
    assert used <= 2, f"idle follower used {used} ticks of {os.sysconf('SC_CLK_TCK')} per second"


def test_follow_after_a_cursor_resumes_with_everything_since(
    writer: JournalWriter, tmp_path: Path, follow: Follow, in_process: Run
) -> None:
    write(writer, *(b"seen %d" % i for i in range(3)))
    shown = in_process("journal", "--data-dir", str(tmp_path), "--show-cursor", "-o", "cat")
    cursor = shown.stdout.splitlines()[-1].removeprefix(b"-- cursor: ").decode()
    write(writer, *(b"missed %d" % i for i in range(25)))
    follower = follow(tmp_path, "-o", "cat", "--after-cursor", cursor)
    assert follower.read_lines(25) == [b"missed %d" % i for i in range(25)]
    write(writer, b"live")
    assert follower.read_lines(1) == [b"live"]


@pytest.mark.parametrize("output", ["verbose", "export"])
def test_follow_prints_new_entries_in_every_field_format(
    writer: JournalWriter, tmp_path: Path, follow: Follow, in_process: Run, output: str
) -> None:
    write(writer, b"before")
    follower = follow(tmp_path, "-o", output)
    write(writer, b"during\nwith a second line")
    whole = in_process("journal", "--data-dir", str(tmp_path), "-o", output).stdout
    assert whole.count(b"during") == 1
    expected = whole.split(b"\n")[:-1]
    assert follower.read_lines(len(expected)) == expected
