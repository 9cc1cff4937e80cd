"""Provides journal followers for the console: `clusterd journal -o json -f` here or over SSH."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncGenerator, Callable, Sequence
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

    async def follow(self) -> AsyncGenerator[list[JournalEntry], None]:
        """Batches of lines, for ever; cancel the consumer, or close this generator, to stop:
        the reader is ended and reaped before either returns (consume it inside
        ``contextlib.aclosing``, so a consumer that stops early closes it at once too).

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
                async with contextlib.aclosing(self._once()) as batches:
                    async for batch in batches:
                        delay = 0.2
                        yield batch
                reason = "the journal reader ended"
            except (OSError, asyncssh.Error, TunnelError, TimeoutError) as error:
                reason = str(error) or type(error).__name__
            self.reconnects += 1
            self._set_state("reconnecting", reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _once(self) -> AsyncGenerator[list[JournalEntry], None]:
        if self.access.is_local(self.machine):
            stream = self._local()
        else:
            stream = self._ssh()
        async with contextlib.aclosing(stream):
            async for lines in stream:
                batch = [parse_entry(line, self.label) for line in lines]
                for entry in reversed(batch):
                    if entry.cursor:
                        self.cursor = entry.cursor
                        break
                yield batch

    async def _local(self) -> AsyncGenerator[list[bytes], None]:
        argv = local_clusterd(self.command())
        process = await spawn_reader(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert process.stdout is not None
        try:
            self._set_state("following")
            async with contextlib.aclosing(_lines(process.stdout.read)) as chunks:
                async for lines in chunks:
                    yield lines
        finally:
            await end_reader(process)

    async def _ssh(self) -> AsyncGenerator[list[bytes], None]:
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
            async with contextlib.aclosing(_lines(process.stdout.read)) as chunks:
                async for lines in chunks:
                    yield [line.rstrip(b"\r") for line in lines]
        finally:
            connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), 5)


_STARTING: set[asyncio.Future[asyncio.subprocess.Process]] = set()
"""Local readers being started."""
_LIVE: dict[asyncio.subprocess.Process, asyncio.Future[None]] = {}
"""Local readers started and not yet reaped, each with a future done when it is."""
_ENDING: set[asyncio.Task[None]] = set()
"""Readers being ended after their caller was cancelled while they started (kept referenced)."""


async def spawn_reader(argv: Sequence[str], **options: Any) -> asyncio.subprocess.Process:
    """Start a local reader (stdin from /dev/null). A cancel that arrives while the process is
    being started (Textual may cancel a worker twice) does not leave it running unowned: the
    start finishes in the background and the reader is ended and reaped there."""
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, **options)
    )
    _STARTING.add(starting)
    starting.add_done_callback(_started)
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_end_when_started)
        raise


def _started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    _STARTING.discard(starting)
    if not starting.cancelled() and starting.exception() is None:
        _LIVE[starting.result()] = starting.get_loop().create_future()


def _end_when_started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if starting.cancelled() or starting.exception() is not None:
        return
    ending = asyncio.ensure_future(end_reader(starting.result()))
    _ENDING.add(ending)
    ending.add_done_callback(_ENDING.discard)


async def end_reader(process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Stop a local reader and reap it: SIGTERM, then SIGKILL after ``grace`` or at a cancel.

    Its output is drained to the end, so its pipe and transport close with it. Textual cancels
    a worker once for each owner that goes (the pane, then the app), and a loop that shuts
    down cancels every task: a cancel arriving here kills the reader at once and is raised
    again only once the reader is reaped, never leaving it running with its pipe open. No
    helper task is started (``communicate`` starts some), so nothing this waits on can be
    cancelled from under it.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    cancelled = killed = False
    drain = True
    try:
        while True:
            try:
                if killed:
                    await _drained(process, drain)
                else:
                    async with asyncio.timeout(grace):
                        await _drained(process, drain)
                break
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                cancelled = True
            except (OSError, RuntimeError, ValueError):
                drain = False  # the pipe cannot be read: a read error tells nothing here
            if not killed:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
    finally:
        reaped = _LIVE.pop(process, None)
        if reaped is not None and not reaped.done():
            reaped.set_result(None)
    if cancelled:
        raise asyncio.CancelledError


async def _drained(process: asyncio.subprocess.Process, drain: bool = True) -> None:
    """Read a reader's output to its end, then wait for it to exit."""
    if drain and process.stdout is not None:
        while await process.stdout.read(1 << 16):
            pass
    await process.wait()


async def readers_ended(within: float = 5.0) -> list[int]:
    """Wait for every local reader being started or ended to be reaped: the console calls this
    on its way out, so no `clusterd journal -f` outlives it. Readers still there after
    ``within`` are killed; their PIDs are returned (none, when all ended on their own)."""
    loop = asyncio.get_running_loop()
    _STARTING.difference_update([f for f in _STARTING if f.get_loop().is_closed()])
    starting = {future for future in _STARTING if future.get_loop() is loop}
    if starting:
        await asyncio.wait(starting, timeout=within)
    mine = [reaped for reaped in _LIVE.values() if reaped.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=within)
    left = sorted(process.pid for process in _LIVE)
    for process in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    mine = [reaped for reaped in _LIVE.values() if reaped.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=2)
    _LIVE.clear()  # killed; a reader of a loop that is gone has no owner left to reap it
    return left


async def _lines(read: Callable[[int], object]) -> AsyncGenerator[list[bytes], None]:
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
        assert process.stdout is not None
        try:
            async with asyncio.timeout(15):
                output = await process.stdout.read()
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
