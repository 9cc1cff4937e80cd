"""A local `clusterd journal` reader ends with its follower: reaped, its pipe closed.

Textual cancels a worker once for each owner that goes (the pane, then the app), so the
reader's clean-up is itself cancelled; before, that left the reader running and its
subprocess transport unclosed (the "unclosed transport" ResourceWarning at the end of a run).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from clustertui.backend.fleet.registry import Machine
from clustertui.backend.journal.writer import JournalWriter
from clustertui.console import journal_stream
from clustertui.console.journal_stream import JournalFollower, MachineAccess, read_journal
from clustertui.widgets.journal_view import JournalEntry
from tests.panes.test_journal_ssh import readers_of

MACHINE = "c0ffee00" * 4


def record_spawns(
    monkeypatch: pytest.MonkeyPatch, hold: float = 0.0
) -> list[asyncio.subprocess.Process]:
    """Every process asyncio starts from now on, listed as it is made; each is handed to its
    caller ``hold`` seconds later."""
    spawned: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recorded(*argv: Any, **options: Any) -> asyncio.subprocess.Process:
        process = await spawn(*argv, **options)
        spawned.append(process)
        if hold:
            await asyncio.sleep(hold)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    return spawned


def local_machine(tmp_path: Path) -> tuple[Machine, Path]:
    """This host as a machine, with a journal of a few lines in its data directory."""
    data_dir = tmp_path / "machine"
    writer = JournalWriter(data_dir, hostname=socket.gethostname(), machine_id=MACHINE)
    for number in range(5):
        writer.line(f"line {number}".encode(), unit="here.service", identifier="sh", pid=1)
    writer.flush()
    machine = Machine(MACHINE, "127.0.0.1", {}, socket.gethostname(), str(data_dir))
    assert MachineAccess().is_local(machine)
    return machine, data_dir


async def test_a_follower_cancelled_twice_reaps_its_reader_before_it_ends(
    tmp_path: Path,
) -> None:
    machine, data_dir = local_machine(tmp_path)
    follower = JournalFollower(MachineAccess(), machine, [], "here")
    batches: asyncio.Queue[list[JournalEntry]] = asyncio.Queue()

    async def consume() -> None:
        async for batch in follower.follow():
            batches.put_nowait(batch)

    task = asyncio.create_task(consume())
    first = await asyncio.wait_for(batches.get(), 30)
    assert [entry.message for entry in first][:5] == [f"line {n}" for n in range(5)]
    assert follower.state == "following"
    [reader] = readers_of(data_dir)

    task.cancel()
    await asyncio.sleep(0)  # the reader's clean-up has begun: SIGTERM sent, waiting for it
    task.cancel()  # as Textual does when the app goes after the pane
    await asyncio.wait({task}, timeout=30)
    assert task.cancelled()
    # Reaped by the time the follower is done: neither running nor a zombie (/proc/PID).
    assert not Path(f"/proc/{reader}").exists()
    assert readers_of(data_dir) == []


async def test_a_follower_closed_between_batches_ends_its_reader_before_the_close_returns(
    tmp_path: Path,
) -> None:
    """A follower closed at a yield (a consumer that stops early, or the loop shutting its
    generators down) closes the generators below it in turn, so the reader is ended and
    reaped before the close returns. Before, the inner generators were left to the garbage
    collector, which could run after the loop was gone: the reader kept running and its
    subprocess transport and pipe were reported unclosed in some later test."""
    machine, data_dir = local_machine(tmp_path)
    batches = JournalFollower(MachineAccess(), machine, [], "here").follow()
    first = await asyncio.wait_for(anext(batches), 30)
    assert [entry.message for entry in first][:5] == [f"line {n}" for n in range(5)]
    [reader] = readers_of(data_dir)
    await asyncio.wait_for(batches.aclose(), 30)
    assert not Path(f"/proc/{reader}").exists()
    assert readers_of(data_dir) == []


async def test_a_cancelled_journal_read_reaps_its_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit status detail's read, cancelled while the reader starts (its pane closed)."""
    machine, data_dir = local_machine(tmp_path)
    spawned = record_spawns(monkeypatch)
    task = asyncio.create_task(read_journal(MachineAccess(), machine, [], "here"))
    for _ in range(2000):  # until the reader is spawned: a few loop turns
        if spawned or task.done():
            break
        await asyncio.sleep(0.001)
    [reader] = spawned
    assert reader.returncode is None  # still starting: a Python interpreter and its imports
    task.cancel()
    await asyncio.wait({task}, timeout=30)
    assert task.cancelled()
    assert reader.returncode is not None
    assert not Path(f"/proc/{reader.pid}").exists()
    assert readers_of(data_dir) == []


async def test_a_journal_read_that_ends_by_itself_still_returns_the_lines(
    tmp_path: Path,
) -> None:
    machine, data_dir = local_machine(tmp_path)
    entries = await read_journal(MachineAccess(), machine, ["here.service"], "here", lines=3)
    assert [entry.message for entry in entries] == ["line 2", "line 3", "line 4"]
    assert readers_of(data_dir) == []


@pytest.mark.parametrize("which", ["follower", "read"])
async def test_a_cancel_while_the_reader_is_being_started_still_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """The cancel lands inside process creation: the process exists, the call has not
    returned it yet. Before, nobody held the process: it kept running, unreaped."""
    machine, data_dir = local_machine(tmp_path)
    # Held 0.5 s: the window between fork and the caller holding the process.
    spawned = record_spawns(monkeypatch, hold=0.5)
    if which == "follower":

        async def consume() -> None:
            async for _ in JournalFollower(MachineAccess(), machine, [], "here").follow():
                pass

        task = asyncio.create_task(consume())
    else:
        task = asyncio.create_task(read_journal(MachineAccess(), machine, [], "here"))
    for _ in range(2000):
        if spawned:
            break
        await asyncio.sleep(0.001)
    [reader] = spawned
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=30)
    assert task.cancelled()
    for _ in range(200):  # ended in the background: SIGTERM, then reaped, pipe drained
        if (
            reader.returncode is not None
            and not readers_of(data_dir)
            and not journal_stream._ENDING
        ):
            break
        await asyncio.sleep(0.05)
    assert not journal_stream._ENDING
    assert reader.returncode is not None
    assert readers_of(data_dir) == []
