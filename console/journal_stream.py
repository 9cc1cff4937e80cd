"""Provides journal followers for the console: `clusterd journal -o json -f` here or over SSH."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import asyncssh

from clustertui.backend.fleet.model import Machine, UnsafeValue, ssh_target
from clustertui.console.access import MachineAccess, journal_command, local_clusterd
from clustertui.console.tunnel import TunnelError
from clustertui.widgets.journal_view import JournalEntry

FollowerState = Literal["connecting", "following", "reconnecting", "refused"]
"""Where a journal follower is: dialling, reading, lost and dialling again, or refused (the
machine's or a unit's record failed validation: it is never dialled)."""
BACKLOG = "100"
"""Lines of history a new follower starts with (a resumed one takes everything after its cursor)."""
MAX_BACKOFF = 5.0


# The decoder's C scanner: set by JSONDecoder.__init__, so typeshed does not declare it.
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_entry(line: bytes, machine: str) -> JournalEntry:
    """A line of ``-o json`` output as a view entry; anything else shows as an error line."""
    try:
        # The C scanner straight away: `-o json` lines are one object each, no padding.
        doc, _ = _scan(line.decode("utf-8", "replace"), 0)
        if not isinstance(doc, dict):
            raise ValueError
    except (ValueError, StopIteration):
        text = line.decode("utf-8", "replace")
        return JournalEntry(0, 3, machine, "clusterd journal", text)
    message = doc.get("MESSAGE", "")
    if isinstance(message, list):
        message = bytes(b for b in message if isinstance(b, int)).decode("utf-8", "replace")
    unit = doc.get("_SYSTEMD_UNIT") or doc.get("UNIT") or doc.get("SYSLOG_IDENTIFIER") or ""
    try:
        priority = int(doc.get("PRIORITY", 6))
        realtime = int(doc.get("__REALTIME_TIMESTAMP", 0))
    except (TypeError, ValueError):
        priority, realtime = 6, 0
    return JournalEntry(
        realtime, priority, machine, str(unit), str(message or ""), str(doc.get("__CURSOR", ""))
    )


class JournalFollower:
    """Follows one machine's journal for some units (all of it without units).

    Drops are survived: the follower says so through ``on_state``, dials again with
    backoff and resumes after the last cursor it delivered, so nothing repeats and
    nothing is skipped.
    """

    def __init__(
        self,
        access: MachineAccess,
        machine: Machine,
        units: Sequence[str],
        label: str,
        *,
        backlog: str = BACKLOG,
        on_state: Callable[[JournalFollower, FollowerState], None] | None = None,
    ) -> None:
        self.access = access
        self.machine = machine
        self.units = list(units)
        self.label = label
        """How the machine is named on each line."""
        self.backlog = backlog
        self.on_state = on_state
        self.cursor = ""
        """The cursor of the last delivered line: a reconnect resumes after it."""
        self.state: FollowerState = "connecting"
        self.ever_followed = False
        """Whether this journal was ever read: a loss is news only then."""
        self.error = ""
        self.reconnects = 0

    def _set_state(self, state: FollowerState, error: str = "") -> None:
        self.state = state
        if state == "following":
            self.ever_followed = True
        self.error = error
        if self.on_state is not None:
            self.on_state(self, state)

    def command(self) -> list[str]:
        return journal_command(
            self.machine,
            self.units,
            lines="all" if self.cursor else self.backlog,
            follow=True,
            output="json",
            after_cursor=self.cursor,
        )

    async def follow(self) -> AsyncIterator[list[JournalEntry]]:
        """Batches of lines, for ever; cancel the consumer to stop (the reader stops too).

        A machine or unit whose record fails validation is never dialled: the follower
        ends in state "refused", with the reason as its error.
        """
        delay = 0.2
        while True:
            try:
                self.command()
            except UnsafeValue as error:
                self._set_state("refused", str(error))
                return
            try:
                async for batch in self._once():
                    delay = 0.2
                    yield batch
                reason = "the journal reader ended"
            except (OSError, asyncssh.Error, TunnelError, TimeoutError) as error:
                reason = str(error) or type(error).__name__
            self.reconnects += 1
            self._set_state("reconnecting", reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _once(self) -> AsyncIterator[list[JournalEntry]]:
        if self.access.is_local(self.machine):
            stream = self._local()
        else:
            stream = self._ssh()
        async for lines in stream:
            batch = [parse_entry(line, self.label) for line in lines]
            for entry in reversed(batch):
                if entry.cursor:
                    self.cursor = entry.cursor
                    break
            yield batch

    async def _local(self) -> AsyncIterator[list[bytes]]:
        argv = local_clusterd(self.command())
        process = await spawn_reader(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert process.stdout is not None
        try:
            self._set_state("following")
            async for lines in _lines(process.stdout.read):
                yield lines
        finally:
            await end_reader(process)

    async def _ssh(self) -> AsyncIterator[list[bytes]]:
        host = ssh_target(self.machine)
        connection = await asyncssh.connect(host, **self.access.ssh_options())
        try:
            # A PTY ties the remote reader to this session: closing it hangs the reader up.
            process = await connection.create_process(
                self.access.remote_command(self.command()),
                term_type="dumb",
                term_size=(1000, 50),
                encoding=None,
            )
            self._set_state("following")
            async for lines in _lines(process.stdout.read):
                yield [line.rstrip(b"\r") for line in lines]
        finally:
            connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), 5)


_ENDING: set[asyncio.Task[None]] = set()
"""Readers being ended after their caller was cancelled while they started (kept referenced)."""


async def spawn_reader(argv: Sequence[str], **options: Any) -> asyncio.subprocess.Process:
    """Start a local reader (stdin from /dev/null). A cancel that arrives while the process is
    being started (Textual may cancel a worker twice) does not leave it running unowned: the
    start finishes in the background and the reader is ended and reaped there."""
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, **options)
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_end_when_started)
        raise


def _end_when_started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if starting.cancelled() or starting.exception() is not None:
        return
    ending = asyncio.ensure_future(end_reader(starting.result()))
    _ENDING.add(ending)
    ending.add_done_callback(_ENDING.discard)


async def end_reader(process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Stop a local reader and reap it: SIGTERM, then SIGKILL after ``grace`` or at a cancel.

    Its output is drained to the end, so its pipe and transport close with it. Textual cancels
    a worker once for each owner that goes (the pane, then the app): a cancel arriving here
    kills the reader at once and is raised again only once the reader is reaped, never leaving
    it running with its pipe open.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    ending = asyncio.ensure_future(process.communicate())
    cancelled = False
    timeout: float | None = grace
    while not ending.done():
        try:
            await asyncio.wait({ending}, timeout=timeout)
        except asyncio.CancelledError:
            cancelled = True
        if not ending.done():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            timeout = None
    if not ending.cancelled():
        ending.exception()  # a read error from a reader being ended tells nothing
    if cancelled:
        raise asyncio.CancelledError


async def _lines(read: Callable[[int], object]) -> AsyncIterator[list[bytes]]:
    """Whole lines from a stream, a read's worth at a time."""
    partial = b""
    while True:
        chunk = await read(1 << 16)  # type: ignore[misc]
        if not chunk:
            return
        data = partial + chunk
        lines = data.split(b"\n")
        partial = lines.pop()
        lines = [line for line in lines if line.strip()]
        if lines:
            yield lines


async def read_journal(
    access: MachineAccess, machine: Machine, units: Sequence[str], label: str, lines: int = 10
) -> list[JournalEntry]:
    """The newest ``lines`` lines of ``units`` on ``machine`` (the unit status detail's tail)."""
    command = journal_command(machine, units, lines=str(lines), follow=False, output="json")
    if access.is_local(machine):
        argv = local_clusterd(command)
        process = await spawn_reader(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), 15)
        finally:
            await end_reader(process)
    else:
        host = ssh_target(machine)
        async with asyncssh.connect(host, **access.ssh_options()) as connection:
            result = await asyncio.wait_for(
                connection.run(access.remote_command(command), encoding=None), 15
            )
        output = result.stdout if isinstance(result.stdout, bytes) else b""
    return [parse_entry(line, label) for line in output.splitlines() if line.strip()]
