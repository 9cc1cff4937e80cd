"""Provides how front ends reach machines: ssh command lines, `clusterd journal` argv, local runs.

``clusterctl`` (ssh, journal, status) and the console (shell, journal followers, the status
tail) build their command lines here, so every value from the store is checked the same
way: an invalid machine or unit name raises :class:`UnsafeValue` and is never dialled.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from clustertui.backend.fleet.demo import clusterd_command
from clustertui.backend.fleet.model import Machine, UnsafeValue, check_machine, ssh_target
from clustertui.backend.fleet.validate import cursor_problem, unit_name_problem
from clustertui.console.tunnel import Tunnel

__all__ = [
    "Hop",
    "MachineAccess",
    "SshRoute",
    "UnsafeValue",
    "check_machine",
    "check_unit_name",
    "is_local",
    "journal_command",
    "local_clusterd",
    "run",
    "ssh_target",
]


class RunError(OSError):
    """A local program could not be started; the message names it."""


@dataclass(frozen=True)
class Hop:
    """The tunnel host an ssh connection hops through (``ssh -W %h:%p``)."""

    host: str
    port: int
    username: str | None


@dataclass(frozen=True)
class SshRoute:
    """How OpenSSH reaches the machines: port, user, keys, host-key policy, tunnel hop."""

    port: int = 22
    username: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    strict: bool | None = True
    """StrictHostKeyChecking yes or no; None leaves it to ssh (it asks, interactively)."""
    connect_timeout: int | None = None
    batch: bool = False
    """BatchMode=yes: never prompt (clusterctl runs in scripts)."""
    hop: Hop | None = None

    def options(self) -> list[str]:
        options: list[str] = []
        if self.strict is not None:
            options += ["-o", f"StrictHostKeyChecking={'yes' if self.strict else 'no'}"]
        if self.connect_timeout is not None:
            options += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.batch:
            options += ["-o", "BatchMode=yes"]
        options += ["-o", "LogLevel=ERROR"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity:
            options += ["-i", os.path.expanduser(self.identity)]
        return options

    def argv(self, machine: Machine, remote: str = "", *, tty: bool) -> list[str]:
        """The ssh command line to ``machine`` (refused with :class:`UnsafeValue` when its
        record is invalid), running ``remote`` there, or a login shell."""
        options = self.options()
        user = ["-l", self.username] if self.username else []
        argv = ["ssh", *options, "-p", str(self.port), *user]
        if self.hop is not None:
            # A ProxyCommand rather than -J, so the hop uses the same key and known hosts.
            hop_user = ["-l", self.hop.username] if self.hop.username else []
            hop = ["ssh", *options, "-p", str(self.hop.port), *hop_user, "-W", "%h:%p"]
            argv += ["-o", "ProxyCommand=" + shlex.join([*hop, self.hop.host])]
        argv.append("-t" if tty else "-T")
        # `--` ends ssh's options: the destination (validated) can never be read as one.
        argv += ["--", ssh_target(machine)]
        if remote:
            argv.append(remote)
        return argv


def check_unit_name(name: str) -> None:
    problem = unit_name_problem(name)
    if problem:
        raise UnsafeValue(f"Unit name refused: {problem}")


def journal_command(
    machine: Machine,
    units: Sequence[str],
    *,
    lines: str,
    follow: bool,
    output: str = "",
    after_cursor: str = "",
) -> list[str]:
    """``clusterd journal …`` for ``units`` on ``machine`` (all of its journal without units).

    Every value from the store is validated and joined to its option (``--unit=NAME``), so
    none can be read as an option; :class:`UnsafeValue` says which one was refused.
    """
    check_machine(machine)
    argv = ["clusterd", "journal"]
    for unit in units:
        check_unit_name(unit)
        argv.append(f"--unit={unit}")
    argv += [f"--lines={lines}", "--no-pager"]
    if machine.data_dir:
        argv.append(f"--data-dir={machine.data_dir}")
    if follow:
        argv.append("-f")
    if output:
        argv.append(f"--output={output}")
    if after_cursor:
        if cursor_problem(after_cursor):
            raise UnsafeValue(cursor_problem(after_cursor))
        argv.append(f"--after-cursor={after_cursor}")
    return argv


def is_local(machine: Machine, *, tunnelled: bool) -> bool:
    """Whether ``machine`` is this host, so its commands run here rather than over SSH."""
    return bool(machine.hostname) and machine.hostname == socket.gethostname() and not tunnelled


def local_clusterd(command: Sequence[str]) -> list[str]:
    """The argv that runs a ``clusterd …`` command here: the installed ``clusterd`` beside
    this Python (or on PATH), with no environment of its own."""
    return [*clusterd_command(), *command[1:]]


def remote_command(remote_clusterd: str, command: Sequence[str]) -> str:
    """A ``clusterd …`` argv as the one line ssh runs remotely (``remote_clusterd`` first)."""
    return remote_clusterd + " " + shlex.join(command[1:])


async def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    stdin: bool = False,
) -> tuple[int, str]:
    """Run ``argv``; stream its stdout into ``out`` as it comes, or collect it when None.

    When ``out`` is the terminal's own stdout the child writes there directly, so an
    interactive ssh session or a followed journal behaves as if run by hand. Raises
    :class:`RunError` when the program cannot be started.
    """
    direct = out is sys.stdout
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=None if stdin else subprocess.DEVNULL,
            stdout=None if direct else subprocess.PIPE,
        )
    except OSError as error:
        raise RunError(f"failed running {argv[0]}: {error.strerror}") from error
    if process.stdout is None:
        return await process.wait(), ""
    collected: list[str] = []
    while chunk := await process.stdout.read(65536):
        text = chunk.decode(errors="replace")
        if out is None:
            collected.append(text)
        else:
            out.write(text)
            out.flush()
    return await process.wait(), "".join(collected)


@dataclass(frozen=True)
class MachineAccess:
    """How the console reaches machines: over SSH (through the tunnel, if any), or locally."""

    tunnel: Tunnel | None = None
    username: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    strict: bool = True
    port: int | None = None
    """Machines' SSH port; the tunnel host's port when tunnelled, else 22."""
    remote_clusterd: str = "clusterd"
    """The command that runs `clusterd` on a machine."""

    def is_local(self, machine: Machine) -> bool:
        return is_local(machine, tunnelled=self.tunnel is not None)

    def ssh_port(self) -> int:
        if self.port:
            return self.port
        if self.tunnel is not None and self.tunnel.spec.port:
            return self.tunnel.spec.port
        return 22

    def _username(self) -> str | None:
        return self.username or (self.tunnel.username if self.tunnel else None)

    def ssh_options(self) -> dict[str, object]:
        """asyncssh's connect options for a machine (the journal followers dial with them)."""
        options: dict[str, object] = {"port": self.ssh_port(), "connect_timeout": 10}
        username = self._username()
        if username:
            options["username"] = username
        if self.identity:
            options["client_keys"] = [self.identity]
        if not self.strict:
            options["known_hosts"] = None
        elif self.known_hosts:
            options["known_hosts"] = self.known_hosts
        if self.tunnel is not None:
            options["tunnel"] = self.tunnel.connection
        return options

    def remote_command(self, command: Sequence[str]) -> str:
        return remote_command(self.remote_clusterd, command)

    def route(self) -> SshRoute:
        """OpenSSH's view of this access: an interactive shell, so ssh may ask about keys;
        unchecked keys are never written to a known hosts file."""
        username = self._username()
        hop = None
        if self.tunnel is not None:
            spec = self.tunnel.spec
            hop = Hop(spec.host, spec.port or 22, username)
        return SshRoute(
            port=self.ssh_port(),
            username=username,
            identity=self.identity,
            known_hosts=self.known_hosts if self.strict else "/dev/null",
            strict=None if self.strict else False,
            hop=hop,
        )

    def shell_argv(self, machine: Machine) -> list[str]:
        """An interactive shell on ``machine``: here, or OpenSSH (hopping via the tunnel host).

        Raises :class:`UnsafeValue` for a machine whose record fails validation.
        """
        check_machine(machine)
        if self.is_local(machine):
            return [os.environ.get("SHELL") or "/bin/sh"]
        return self.route().argv(machine, tty=True)
