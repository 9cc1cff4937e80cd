"""Provides process supervision for one unit: exec lines, restart policy, stop with timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from clustertui.backend import filemodes
from clustertui.backend.fleet.output import LineSink
from clustertui.backend.fleet.tasks import wait_event
from clustertui.backend.fleet.unitfile import ExecCommand, ServiceOptions, UnitFile

# Signals after which systemd counts a main process as having exited cleanly.
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
_VAR_WORD = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_VAR_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_BACKOFF = 30.0
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """How a run of the unit ended: systemd's result names."""

    result: str  # success, exit-code, signal, timeout, exec-failed, protocol
    status: int = 0

    @property
    def clean(self) -> bool:
        return self.result == "success"

    def describe(self) -> str:
        if self.result == "signal":
            return f"killed by {signal.Signals(self.status).name}"
        if self.result == "exit-code":
            return f"exited with status {self.status}"
        return self.result


def _result_of(returncode: int) -> Outcome:
    if returncode == 0:
        return Outcome("success")
    if returncode < 0:
        number = -returncode
        if number in {int(s) for s in CLEAN_SIGNALS}:
            return Outcome("success", number)
        return Outcome("signal", number)
    return Outcome("exit-code", returncode)


def should_restart(policy: str, outcome: Outcome) -> bool:
    """systemd's Restart= table for the results we produce."""
    if policy == "always":
        return True
    if policy == "on-failure":
        return not outcome.clean
    if policy == "on-abnormal":
        return outcome.result in ("signal", "timeout")
    return False


def substitute(argv: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """Expand ``$VAR`` (a whole word, split on whitespace) and ``${VAR}`` (in place)."""
    words: list[str] = []
    for word in argv:
        whole = _VAR_WORD.match(word)
        if whole:
            words.extend(env.get(whole.group(1), "").split())
            continue
        words.append(_VAR_BRACED.sub(lambda m: env.get(m.group(1), ""), word).replace("$$", "$"))
    return words


def read_environment_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines with ``#`` comments and optional quotes, as systemd reads them."""
    env: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        key, eq, value = text.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[7:].strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (to tell it from a later process with the same PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in the process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def reap_orphans(run_dir: Path, grace: float = 5.0) -> list[str]:
    """Stop unit processes a previous run of the agent left behind; returns their unit names.

    Each started unit leaves ``<run_dir>/<unit>.json`` with its process group and the start
    time of its leader, so a PID the kernel has since reused is never signalled.
    """
    stopped: list[str] = []
    if not run_dir.is_dir():
        return stopped
    for record in sorted(run_dir.glob("*.json")):
        try:
            data = json.loads(record.read_text())
            pid, pgid, started = int(data["pid"]), int(data["pgid"]), str(data["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if process_start_time(pid) == started or (group_alive(pgid) and started):
            if process_start_time(pid) == started:
                pgid = _group_of(pid, pgid)  # a detached daemon's own group
            _kill_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _kill_group(pgid, signal.SIGKILL)
            stopped.append(record.stem)
        record.unlink(missing_ok=True)
    return stopped


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Resolves ``exited`` as soon as the process ends.

    asyncio's ``Process.wait()`` (before Python 3.12) also waits for stdout and stderr to
    close, and a unit's background children keep them open long after the main process died.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


@dataclass
class _Child:
    """A spawned process and the future that resolves when it exits."""

    process: asyncio.subprocess.Process
    exited: asyncio.Future[None]
    transport: asyncio.SubprocessTransport

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        await asyncio.shield(self.exited)
        return self.process.returncode or 0

    def close(self) -> None:
        """Let go of the pipes (a child's children may still hold the other ends)."""
        self.transport.close()


class _NotifySocket:
    """The sd_notify(3) socket of a Type=notify unit: READY=1, STATUS=, STOPPING=1.

    An abstract datagram socket (no path to clean up or to outgrow sun_path), passed as
    $NOTIFY_SOCKET. Senders are identified by their credentials: processes of the unit's
    process group are heard (systemd's NotifyAccess=all, for want of cgroups), others not.
    """

    def __init__(self, runner: UnitRunner) -> None:
        self.runner = runner
        self.ready = asyncio.Event()
        self.status = ""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        name = f"clusterd/notify/{os.getpid()}/{secrets.token_hex(8)}"
        self.sock.bind("\0" + name)
        self.address = "@" + name
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._receive)

    def _receive(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sender = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("=iII", payload[:12])[0]
            main = self.runner.main_pid
            if not main or not sender or not _in_group(sender, main):
                continue
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").split("\n"):
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                self.ready.set()
            elif key == "STATUS":
                self.status = value
                self.runner.status_text = value
                self.runner.on_change(self.runner)
            elif key == "STOPPING" and value == "1":
                self.runner._set("deactivating", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _group_of(pid: int, fallback: int) -> int:
    """The process group ``pid`` is in now, or ``fallback`` if it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return fallback


def _pid_in(path: Path) -> int:
    """The PID a PID file holds, or 0."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _watch_exit(pid: int) -> asyncio.Future[None]:
    """A future that completes when ``pid`` (not necessarily our child) exits."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = -1
    if fd >= 0:

        def readable() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if not gone.done():
                gone.set_result(None)

        def cancelled(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
                    os.close(fd)

        loop.add_reader(fd, readable)
        gone.add_done_callback(cancelled)
        return gone

    async def poll() -> None:  # no pidfds (Linux before 5.3): watch /proc
        while True:
            if not process_start_time(pid):
                break
            await asyncio.sleep(0.1)
        if not gone.done():
            gone.set_result(None)

    poller = asyncio.ensure_future(poll())
    gone.add_done_callback(lambda _: poller.cancel())
    return gone


def _in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` may speak for the unit: its leader, a member of its group, or gone.

    A short-lived sender (`systemd-notify --ready` from a shell script) has often exited
    before its message is read, and can no longer be checked; the socket's random abstract
    name, known only from the unit's environment, is what keeps strangers out.
    """
    if pid == pgid:
        return True
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


class UnitRunner:
    """Runs one unit's processes and keeps its systemd-style state."""

    def __init__(
        self,
        name: str,
        unit: UnitFile,
        *,
        sink: LineSink,
        run_dir: Path,
        on_change: Callable[[UnitRunner], None] = lambda runner: None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.options: ServiceOptions = unit.service(name)
        self.sink = sink
        self.run_dir = run_dir
        self.on_change = on_change
        self.active_state = "inactive"
        self.sub_state = "dead"
        self.main_pid = 0
        self.restarts = 0
        self.status_text = ""
        """What a Type=notify unit last said with STATUS=."""
        self.last_outcome: Outcome | None = None
        self._main: _Child | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._children: list[_Child] = []
        self.fenced = False
        """Set when the unit was killed for a lost lease: it is not restarted."""

    @property
    def unit_hash(self) -> str:
        return self.unit.hash

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _set(self, active: str, sub: str) -> None:
        if (active, sub) != (self.active_state, self.sub_state):
            before = self.active_state
            self.active_state, self.sub_state = active, sub
            self._announce(before, active, sub)
            self.on_change(self)

    def _announce(self, before: str, active: str, sub: str) -> None:
        """systemd's own lines for a change of state, in the unit's journal: "Starting…",
        "Started…", "Stopping…", "Stopped…", and the result when it failed."""
        described = self.name
        if description := self.unit.description(self.name):
            described = f"{self.name} - {description}"
        outcome = self.last_outcome
        if active == "activating" and sub == "start" and before != "activating":
            self._system(f"Starting {described}...")
        elif active == "active" and before != "active":
            self._system(f"Started {described}.")
        elif active == "deactivating" and before != "deactivating" and self._stop.is_set():
            self._system(f"Stopping {described}...")
        elif active == "failed":
            result = outcome.result if outcome is not None else "exit-code"
            self._system(f"{self.name}: Failed with result '{result}'.", 4)
            if before == "activating":
                self._system(f"Failed to start {described}.", 3)
        elif active == "inactive" and before != "inactive":
            if self._stop.is_set():
                self._system(f"Stopped {described}.")
            elif before == "activating" and self.options.type == "oneshot":
                self._system(f"{self.name}: Deactivated successfully.")
                self._system(f"Finished {described}.")
            else:
                self._system(f"{self.name}: Deactivated successfully.")

    def _system(self, text: str, priority: int = 6) -> None:
        """A line from the service manager itself, as systemd writes it (not the unit's
        output: the ``journal`` stream, not stdout or stderr)."""
        self.sink.line(
            text.encode(),
            unit=self.name,
            identifier="clusterd",
            pid=os.getpid(),
            priority=priority,
            stream="journal",
        )

    def _note(self, text: str, priority: int = 6) -> None:
        self.sink.line(
            text.encode(), unit=self.name, identifier="clusterd", pid=os.getpid(), priority=priority
        )

    def start(self) -> None:
        """Begin supervising (returns at once; state changes report through ``on_change``)."""
        if self.running:
            return
        self._stop.clear()
        self.fenced = False
        self._task = asyncio.create_task(self._supervise(), name=f"unit-{self.name}")

    async def stop(self) -> None:
        """Stop the unit: ExecStop, KillSignal, then SIGKILL after TimeoutStopSec; wait for it."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        # asyncio.wait, not `await task`: a caller cancelled here (the agent's reconcile loop,
        # cancelled when its session ends) must see its own CancelledError. `await task` would
        # cancel the unit's supervisor with it and, with that suppressed, swallow the caller's
        # cancellation: the reconcile loop then never ended and the agent never registered again.
        await asyncio.wait({task})
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.result()
        # A stopped unit starts over: its earlier failure no longer describes it.
        self._set("inactive", "dead")

    async def fence(self, within: float) -> None:
        """Stop for a lost lease: ExecStop and the kill signal, then SIGKILL at ``within`` s.

        However long TimeoutStopSec is, the unit's processes are gone when this returns, or
        SIGKILLed at most ``within`` seconds after it was called.
        """
        task = self._task
        if task is None:
            return
        self._stop.set()
        await asyncio.wait({task}, timeout=max(0.0, within))
        if not task.done():
            self._note("fenced: stop did not finish in time; SIGKILL", 4)
            self.kill_now()
            await asyncio.wait({task}, timeout=5.0)
        if task.done():
            await self.stop()

    def kill_now(self) -> None:
        """SIGKILL every process group of the unit at once (synchronous: safe in a handler)."""
        for child in self._children:
            if child.returncode is None:
                _kill_group(child.pid, signal.SIGKILL)
        if self.main_pid:
            _kill_group(_group_of(self.main_pid, self.main_pid), signal.SIGKILL)
        # No restart after this (a plain attribute: a signal handler may call this).
        self.fenced = True

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})  # the caller's cancellation stays the caller's

    def _environment(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        account = self._account()
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        env["SHELL"] = account.pw_shell or "/bin/sh"
        env.update(self.options.environment)
        for path, optional in self.options.environment_files:
            try:
                env.update(read_environment_file(Path(path)))
            except OSError as error:
                if not optional:
                    raise RuntimeError(f"EnvironmentFile={path}: {error.strerror}") from error
        return env

    def _as_user(self) -> bool:
        return bool(self.options.user) and os.geteuid() == 0

    def _account(self) -> pwd.struct_passwd:
        """The account the unit runs as: User= when the agent is root, else the agent's own."""
        user = self.options.user
        if not self._as_user():
            if user:
                self._note(f"User={user} ignored: the agent does not run as root", 4)
            return pwd.getpwuid(os.getuid())
        try:
            return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(f"User={user}: no such user") from None

    def _spawn_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"start_new_session": True, "stdin": asyncio.subprocess.DEVNULL}
        workdir = self.options.working_directory
        if workdir:
            optional = workdir.startswith("-")
            path = Path(workdir.lstrip("-")).expanduser()
            if path.is_dir():
                kwargs["cwd"] = str(path)
            elif not optional:
                raise RuntimeError(f"WorkingDirectory={path} does not exist")
        if self._as_user():
            account = self._account()
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        return kwargs

    async def _spawn(self, command: ExecCommand, env: dict[str, str]) -> _Child:
        argv = substitute(command.argv, env)
        if not argv:
            raise RuntimeError("the command expands to nothing")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(loop),
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            **self._spawn_kwargs(),  # type: ignore[arg-type]
        )
        process = asyncio.subprocess.Process(transport, protocol, loop)
        identifier = Path(argv[0]).name
        for stream, kind in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            assert stream is not None
            task = asyncio.create_task(self._pump(stream, identifier, process.pid, kind))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)
        child = _Child(process, protocol.exited, transport)
        self._children.append(child)
        return child

    async def _pump(
        self, stream: asyncio.StreamReader, identifier: str, pid: int, kind: str
    ) -> None:
        pending = b""
        while chunk := await stream.read(_CHUNK):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.sink.line(line, unit=self.name, identifier=identifier, pid=pid, stream=kind)
            if len(pending) >= _CHUNK:
                self.sink.line(pending, unit=self.name, identifier=identifier, pid=pid, stream=kind)
                pending = b""
        if pending:
            self.sink.line(pending, unit=self.name, identifier=identifier, pid=pid, stream=kind)
        self.sink.flush()

    async def _control(
        self, commands: tuple[ExecCommand, ...], env: dict[str, str], limit: float
    ) -> bool:
        """Run control commands in order; False when one fails and its failure counts.

        Start-phase commands give way to a stop request; stop-phase ones run while stopping.
        """
        interruptible = not self._stop.is_set()
        for command in commands:
            try:
                process = await self._spawn(command, env)
            except (OSError, RuntimeError) as error:
                self._note(f"{shlex.join(command.argv)}: {error}", 3)
                if command.ignore_failure:
                    continue
                return False
            stopped = asyncio.ensure_future(
                self._stop.wait() if interruptible else asyncio.Event().wait()
            )
            waited = asyncio.ensure_future(process.wait())
            done, _ = await asyncio.wait(
                {stopped, waited},
                timeout=None if limit == float("inf") else limit,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped.cancel()
            if waited not in done:
                waited.cancel()
                _kill_group(process.pid, signal.SIGKILL)
                await process.wait()
                if not self._stop.is_set():
                    self._note(f"{shlex.join(command.argv)}: timed out after {limit:g}s", 3)
                return False
            if process.returncode != 0 and not command.ignore_failure:
                outcome = _result_of(process.returncode or 0)
                self._note(f"{shlex.join(command.argv)}: {outcome.describe()}", 3)
                return False
        return True

    def _record(self, process: _Child) -> None:
        self._record_pid(process.pid, process.pid)

    def _record_pid(self, pid: int, pgid: int) -> None:
        filemodes.make_dirs(self.run_dir, filemodes.PRIVATE_DIR)
        record = {"pid": pid, "pgid": pgid, "start_time": process_start_time(pid)}
        filemodes.write_file(self._record_path, json.dumps(record).encode(), filemodes.PRIVATE_FILE)

    @property
    def _record_path(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    async def _supervise(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set() and not self.fenced:
                began = time.monotonic()
                outcome = await self._run_once()
                self.last_outcome = outcome
                if self._stop.is_set() or self.fenced:
                    break
                if not should_restart(self.options.restart, outcome):
                    if outcome.clean:
                        self._set("inactive", "dead")
                    else:
                        self._set("failed", "failed")
                    return
                # Quick consecutive failures back off, doubling up to a cap; a run that
                # lasted a while starts the count again.
                failures = failures + 1 if time.monotonic() - began < 10 else 1
                delay = min(self.options.restart_sec * 2 ** (failures - 1), _MAX_BACKOFF)
                delay = max(delay, self.options.restart_sec)
                self._note(f"restarting in {delay:g}s (restart {self.restarts + 1})")
                self._set("activating", "auto-restart")
                await wait_event(self._stop, delay)
                self.restarts += 1
            self._set("inactive", "dead")
        finally:
            self._record_path.unlink(missing_ok=True)
            await self._drain()

    async def _run_once(self) -> Outcome:
        options = self.options
        self._set("activating", "start")
        try:
            env = self._environment()
        except RuntimeError as error:
            self._note(str(error), 3)
            return Outcome("exec-failed")
        timeout = options.timeout_start_sec
        if not await self._control(options.exec_start_pre, env, timeout):
            await self._control(options.exec_stop_post, env, options.timeout_stop_sec)
            return Outcome("exit-code", 1)
        if options.type == "oneshot":
            return await self._run_oneshot(env)
        if options.type == "forking":
            return await self._run_forking(env)
        if not options.exec_start:
            return Outcome("success")
        command = options.exec_start[0]
        notify = _NotifySocket(self) if options.type == "notify" else None
        try:
            if notify is not None:
                env = {**env, "NOTIFY_SOCKET": notify.address}
            process = await self._spawn(command, env)
        except (OSError, RuntimeError) as error:
            if notify is not None:
                notify.close()
            self._note(f"failed to start {command.argv[0]}: {error}", 3)
            await self._control(options.exec_stop_post, env, options.timeout_stop_sec)
            return Outcome("exec-failed")
        try:
            return await self._run_main(command, process, env, notify)
        finally:
            if notify is not None:
                notify.close()

    async def _run_main(
        self,
        command: ExecCommand,
        process: _Child,
        env: dict[str, str],
        notify: _NotifySocket | None,
    ) -> Outcome:
        options = self.options
        timeout = options.timeout_start_sec
        self._main = process
        self.main_pid = process.pid
        self._record(process)
        if notify is not None:
            ready = await self._until_ready(process, notify, timeout)
            if ready is not None:
                await self._kill(process.pid, options.kill_signal, options.timeout_stop_sec)
                await process.wait()
                return await self._end_run(env, ready)
        self._set("active", "running")
        await self._control(options.exec_start_post, env, timeout)
        stopped = asyncio.ensure_future(self._stop.wait())
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not exited.done():
            exited.cancel()
            outcome = await self._stop_main(process, env)
        else:
            outcome = _result_of(process.returncode or 0)
            if not outcome.clean:
                self._note(f"main process {process.pid} {outcome.describe()}", 4)
            if command.ignore_failure and outcome.result == "exit-code":
                outcome = Outcome("success", outcome.status)
            self._set("deactivating", "stop-sigterm")
            # What the main process left behind in its group goes with it.
            await self._kill(process.pid, options.kill_signal, options.timeout_stop_sec)
        return await self._end_run(env, outcome)

    async def _end_run(self, env: dict[str, str], outcome: Outcome) -> Outcome:
        """ExecStopPost with the run's result, the last output lines, and the run forgotten."""
        await self._control(
            self.options.exec_stop_post,
            {**env, "SERVICE_RESULT": outcome.result},
            self.options.timeout_stop_sec,
        )
        await self._drain()
        self._main = None
        self.main_pid = 0
        return outcome

    async def _until_ready(
        self, process: _Child, notify: _NotifySocket, limit: float
    ) -> Outcome | None:
        """Type=notify: wait for READY=1. None once ready; else how the start ended."""
        stopped = asyncio.ensure_future(self._stop.wait())
        exited = asyncio.ensure_future(process.wait())
        ready = asyncio.ensure_future(notify.ready.wait())
        done, _ = await asyncio.wait(
            {stopped, exited, ready},
            timeout=None if limit == float("inf") else limit,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in (stopped, exited, ready):
            waiter.cancel()
        if ready in done or notify.ready.is_set():
            return None
        if stopped in done:
            return Outcome("success")
        if exited in done:
            outcome = _result_of(process.returncode or 0)
            self._note(f"main process {process.pid} {outcome.describe()} before READY=1", 3)
            return outcome if not outcome.clean else Outcome("protocol")
        self._note(f"start operation timed out after {limit:g}s without READY=1", 3)
        return Outcome("timeout")

    async def _run_forking(self, env: dict[str, str]) -> Outcome:
        """Type=forking: ExecStart detaches a daemon and exits 0; PIDFile= names the daemon.

        The daemon is not our child (it is reparented when its starter exits), so its exit
        is seen through a pidfd but its status cannot be known: a daemon that dies on its
        own counts as failed, which is what Restart=on-failure is for.
        """
        options = self.options
        limit = options.timeout_start_sec
        command = options.exec_start[0]
        try:
            starter = await self._spawn(command, env)
        except (OSError, RuntimeError) as error:
            self._note(f"failed to start {command.argv[0]}: {error}", 3)
            await self._control(options.exec_stop_post, env, options.timeout_stop_sec)
            return Outcome("exec-failed")
        self.main_pid = starter.pid
        deadline = time.monotonic() + limit
        started = await self._wait_or_stop(starter.wait(), limit)
        daemon = 0
        if started == "done" and starter.returncode == 0:
            daemon = await self._read_pid_file(deadline)
        outcome: Outcome | None = None
        if started == "stopped":
            outcome = Outcome("success")
        elif started == "timeout":
            self._note(f"start operation timed out after {limit:g}s", 3)
            outcome = Outcome("timeout")
        elif starter.returncode != 0:
            outcome = _result_of(starter.returncode or 0)
            self._note(f"{shlex.join(command.argv)}: {outcome.describe()}", 3)
        elif not daemon:
            self._note(f"PIDFile={options.pid_file} names no running process after start", 3)
            outcome = Outcome("protocol")
        if outcome is not None:
            await self._kill(starter.pid, options.kill_signal, options.timeout_stop_sec)
            return await self._end_run(env, outcome)
        pgid = _group_of(daemon, daemon)
        gone = _watch_exit(daemon)
        self.main_pid = daemon
        self._record_pid(daemon, pgid)
        self._set("active", "running")
        await self._control(options.exec_start_post, env, limit)
        ended = await self._wait_or_stop(gone, float("inf"))
        if ended == "done":
            self._note(f"main process {daemon} exited (its status is unknown: not our child)", 4)
            outcome = Outcome("exit-code", 1)
            self._set("deactivating", "stop-sigterm")
        else:
            self._set("deactivating", "stop-sigterm")
            await self._control(
                options.exec_stop, {**env, "MAINPID": str(daemon)}, options.timeout_stop_sec
            )
            outcome = Outcome("success")
        if options.kill_mode == "process":
            if not gone.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon, options.kill_signal)
                if await self._wait_or_stop(gone, options.timeout_stop_sec, stop=False) != "done":
                    self._set("deactivating", "stop-sigkill")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(daemon, signal.SIGKILL)
        else:
            # Its group now: a daemon may call setsid() after its PID was written.
            await self._kill(_group_of(daemon, pgid), options.kill_signal, options.timeout_stop_sec)
        await self._kill(starter.pid, options.kill_signal, options.timeout_stop_sec)
        gone.cancel()
        return await self._end_run(env, outcome)

    async def _wait_or_stop(
        self, awaitable: Awaitable[object], limit: float, stop: bool = True
    ) -> str:
        """ "done" when ``awaitable`` completes, "stopped" on a stop request, else "timeout"."""
        waited = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stop.wait() if stop else asyncio.Event().wait())
        done, _ = await asyncio.wait(
            {waited, stopped},
            timeout=None if limit == float("inf") else limit,
            return_when=asyncio.FIRST_COMPLETED,
        )
        stopped.cancel()
        if waited in done:
            return "done"
        if not isinstance(awaitable, asyncio.Future):
            waited.cancel()
        return "stopped" if stopped in done else "timeout"

    async def _read_pid_file(self, deadline: float) -> int:
        """The live PID in PIDFile=, waiting for the file until ``deadline``; 0 if none."""
        path = Path(self.options.pid_file)
        while True:
            pid = _pid_in(path)
            if pid > 0 and process_start_time(pid):
                return pid
            if time.monotonic() >= deadline or self._stop.is_set():
                return 0
            await asyncio.sleep(0.05)

    async def _run_oneshot(self, env: dict[str, str]) -> Outcome:
        options = self.options
        if not await self._control(options.exec_start, env, options.timeout_start_sec):
            await self._control(options.exec_stop_post, env, options.timeout_stop_sec)
            return Outcome("success") if self._stop.is_set() else Outcome("exit-code", 1)
        await self._control(options.exec_start_post, env, options.timeout_start_sec)
        await self._drain()
        if options.remain_after_exit:
            self._set("active", "exited")
            await self._stop.wait()
            self._set("deactivating", "stop")
            await self._control(options.exec_stop, env, options.timeout_stop_sec)
        await self._control(options.exec_stop_post, env, options.timeout_stop_sec)
        return Outcome("success")

    async def _stop_main(self, process: _Child, env: dict[str, str]) -> Outcome:
        options = self.options
        self._set("deactivating", "stop-sigterm")
        env = {**env, "MAINPID": str(process.pid)}
        await self._control(options.exec_stop, env, options.timeout_stop_sec)
        await self._kill(process.pid, options.kill_signal, options.timeout_stop_sec)
        await process.wait()
        return _result_of(process.returncode or 0)

    async def _kill(self, pgid: int, sig: int, limit: float) -> None:
        """Send ``sig`` (to the group, or the main process for KillMode=process), then SIGKILL."""
        if self.options.kill_mode == "process":
            main = self._main
            if main is not None and main.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    main.process.send_signal(sig)
                try:
                    await asyncio.wait_for(main.wait(), None if limit == float("inf") else limit)
                except TimeoutError:
                    self._set("deactivating", "stop-sigkill")
                    with contextlib.suppress(ProcessLookupError):
                        main.process.kill()
            return
        if not group_alive(pgid):
            return
        _kill_group(pgid, sig)
        _kill_group(pgid, signal.SIGCONT)
        if not await _wait_group_gone(pgid, limit):
            self._set("deactivating", "stop-sigkill")
            _kill_group(pgid, signal.SIGKILL)
            await _wait_group_gone(pgid, 5.0)

    async def _drain(self) -> None:
        """Let the output readers finish the lines already written."""
        if self._pumps:
            await asyncio.wait(set(self._pumps), timeout=1.0)
        for child in [c for c in self._children if c.returncode is not None]:
            child.close()
            self._children.remove(child)
        self.sink.flush()
