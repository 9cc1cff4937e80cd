"""`clusterd journal -f` when its journal's directory is deleted, moved away and made again."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import select
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clustertui.backend.journal.reader import DirectoryWatch
from clustertui.backend.journal.writer import JournalWriter
from tests.journal.conftest import Follower

Follow = Callable[..., Follower]

REMOVED = b"was removed; waiting for it to come back"


def write(data_dir: Path, *lines: bytes) -> str:
    """Write ``lines`` with a writer of its own (as a restarted node would); the journal's ID."""
    with JournalWriter(data_dir, hostname="h", machine_id="0" * 32) as writer:
        for line in lines:
            writer.line(line, unit="app.service", identifier="app", pid=5)
        writer.flush()
        return writer.journal_id


def messages(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["MESSAGE"] for line in lines]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def remove(data_dir: Path, how: str) -> None:
    if how == "rm -rf journal":
        shutil.rmtree(data_dir / "journal")
    elif how == "rm -rf data dir":
        shutil.rmtree(data_dir)
    else:  # mv journal away
        os.rename(data_dir / "journal", data_dir / "journal.old")


@pytest.mark.parametrize("how", ["rm -rf journal", "rm -rf data dir", "mv journal away"])
def test_follow_says_its_directory_went_and_follows_the_new_one(
    tmp_path: Path, follow: Follow, how: str
) -> None:
    data_dir = tmp_path / "node"
    old_id = write(data_dir, b"before 1", b"before 2")
    follower = follow(data_dir, "-o", "json")
    assert messages(follower.read_lines(2)) == ["before 1", "before 2"]

    remove(data_dir, how)
    said = follower.read_stderr_until(REMOVED)
    assert (
        said
        == (
            f"clusterd journal: journal directory {data_dir / 'journal'} was removed; "
            "waiting for it to come back\n"
        ).encode()
    )

    # Waiting costs nothing: no busy loop while there is no directory.
    before = cpu_ticks(follower.process.pid)
    time.sleep(1.0)
    assert cpu_ticks(follower.process.pid) - before <= 2
    assert os.path.exists(data_dir / "journal") is False, "a reader must not make the journal"

    new_id = write(data_dir, b"after 1", b"after 2")
    assert new_id != old_id
    started = time.monotonic()
    lines = follower.read_lines(2, timeout=5)
    took = time.monotonic() - started
    assert messages(lines) == ["after 1", "after 2"], lines
    # The new journal's cursor names the new journal.
    assert f"s={new_id};".encode() in lines[0]
    assert took < 5
    write(data_dir, b"live")
    assert messages(follower.read_lines(1, timeout=5)) == ["live"]
    follower.read_stderr_until(b"is back")
    assert REMOVED not in follower._errors  # said once


def test_follow_notices_every_removal_not_just_the_first(tmp_path: Path, follow: Follow) -> None:
    write(tmp_path, b"one")
    follower = follow(tmp_path, "-o", "json")
    assert messages(follower.read_lines(1)) == ["one"]
    for round_ in range(3):
        shutil.rmtree(tmp_path / "journal")
        follower.read_stderr_until(REMOVED)
        write(tmp_path, b"round %d" % round_)
        assert messages(follower.read_lines(1, timeout=5)) == [f"round {round_}"]


def test_a_running_writer_starts_a_new_journal_and_the_follower_follows_it(
    tmp_path: Path, follow: Follow
) -> None:
    # A node keeps its writer open for days: someone deleting its journal must not leave it
    # writing into files nobody can open (or failing every second), nor the follower waiting.
    with JournalWriter(tmp_path, hostname="h", machine_id="0" * 32) as writer:
        writer.line(b"one", unit="a.service", identifier="a", pid=1)
        writer.flush()
        old_id = writer.journal_id
        follower = follow(tmp_path, "-o", "json")
        assert messages(follower.read_lines(1)) == ["one"]
        shutil.rmtree(tmp_path / "journal")
        follower.read_stderr_until(REMOVED)
        writer.line(b"two", unit="a.service", identifier="a", pid=1)
        writer.flush()
        assert writer.journal_id != old_id
        (line,) = follower.read_lines(1, timeout=5)
        assert messages([line]) == ["two"]
        assert f"s={writer.journal_id};".encode() in line
        # Without flush(): the writer's own thread writes the new journal too.
        writer.line(b"three", unit="a.service", identifier="a", pid=1)
        assert messages(follower.read_lines(1, timeout=5)) == ["three"]
    assert (tmp_path / "journal" / ".lock").exists()


def test_a_follower_waiting_for_its_directory_exits_when_its_reader_goes(
    tmp_path: Path, follow: Follow
) -> None:
    write(tmp_path, b"one")
    follower = follow(tmp_path, "-o", "cat")
    assert follower.read_lines(1) == [b"one"]
    shutil.rmtree(tmp_path / "journal")
    follower.read_stderr_until(REMOVED)
    follower.stdout.close()
    assert follower.process.wait(timeout=10) == 0


# -- without inotify watches -------------------------------------------------------------------


class _Patched:
    """The real libc, except that inotify has no watches left (fs.inotify.max_user_watches
    reached): a failure the kernel gives on demand only by lowering a machine-wide limit."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.inotify_init1 = libc.inotify_init1

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    def inotify_rm_watch(self, fd: int, wd: int) -> int:
        return 0


@pytest.mark.parametrize("why", ["no inotify", "no watches left"])
def test_the_stat_fallback_notices_the_directory_going_and_coming_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    write(tmp_path, b"one")
    journal = tmp_path / "journal"
    if why == "no inotify":
        monkeypatch.setattr(ctypes.util, "find_library", lambda name: "/nonexistent/libc.so")
    else:
        real = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _Patched(real))
    watch = DirectoryWatch(journal)
    try:
        assert watch.present
        poller = select.poll()
        if watch.uses_inotify:
            poller.register(watch.fd, select.POLLIN)
        write(tmp_path, b"two")
        started = time.monotonic()
        watch.wait(poller, None)  # the new segment data wakes it
        assert not watch.gone
        shutil.rmtree(journal)
        before = time.process_time()
        watch.wait(poller, None)
        assert watch.gone
        assert time.monotonic() - started < 2
        assert time.process_time() - before < 0.2  # looked every 50 ms, no busy loop
        assert not watch.arm()
        write(tmp_path, b"three")
        assert watch.arm() and watch.present
    finally:
        watch.close()
