"""Provides SSH tunnels to a cluster's store endpoints (asyncssh), with reconnection and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncssh

from clustertui.backend.etcd import Endpoint

DEFAULT_TIMEOUT = 10.0

TunnelState = Literal["connected", "reconnecting", "closed"]
"""Where the tunnel is: forwarding, redialling after a drop, or shut by :meth:`Tunnel.close`."""


class TunnelError(Exception):
    """The tunnel could not be opened; the message says why and how to fix it."""


class HostKeyUntrusted(TunnelError):
    """The tunnel host's key is unknown or changed; the message names its fingerprint."""


class TunnelLost(TunnelError):
    """The tunnel dropped and is being re-established."""


@dataclass(frozen=True)
class TunnelSpec:
    """Where the tunnel goes: ``[user@]host[:port]`` split into its parts."""

    host: str
    port: int | None = None
    username: str | None = None

    @classmethod
    def parse(cls, spec: str) -> TunnelSpec:
        text = spec.strip()
        if not text:
            raise TunnelError("the tunnel names no host")
        username = None
        if "@" in text:
            username, text = text.rsplit("@", 1)
        port = None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], spec)
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = _port(port_text, spec)
        else:
            host = text
        if not host:
            raise TunnelError(f"tunnel {spec!r} names no host")
        return cls(host, port, username or None)

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TunnelError(f"tunnel {spec!r}: {text!r} is not a port number")
    return int(text)


@dataclass
class _Forward:
    """One forwarded endpoint: the store as the tunnel host sees it, and our loopback port."""

    remote: Endpoint
    local_port: int = 0

    @property
    def local_url(self) -> str:
        return f"{self.remote.scheme}://127.0.0.1:{self.local_port}"


class _Prompting(asyncssh.SSHClient):
    """Asks for a password in the terminal, once, before the console takes the screen."""

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def password_auth_requested(self) -> str | None:
        if self._tunnel.password is not None:
            return self._tunnel.password
        if not self._tunnel.interactive or not sys.stdin.isatty():
            return None
        self._tunnel.password = getpass.getpass(f"{self._tunnel.who} password: ")
        return self._tunnel.password


class Tunnel:
    """An SSH connection that forwards a loopback port to each store endpoint.

    The local ports stay the same across reconnects, so a store client pointed at
    :attr:`endpoints` keeps working once the tunnel is back.
    """

    def __init__(
        self,
        spec: TunnelSpec,
        endpoints: Sequence[str],
        *,
        identity: str | None = None,
        known_hosts: str | None = None,
        strict: bool = True,
        username: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_state: Callable[[TunnelState, int], None] | None = None,
        identity_flag: str = "--identity",
        known_hosts_label: str | None = None,
    ) -> None:
        self.spec = spec
        self.identity_flag = identity_flag
        """The flag of the program using the tunnel that names an identity file."""
        self.known_hosts_label = known_hosts_label
        """How errors name the known hosts file when the program's default was absent."""
        self.identity = identity
        self.known_hosts = known_hosts
        self.strict = strict
        # The user named in the spec wins over the --ssh-username default, as with ssh.
        self.username = spec.username or username
        self.timeout = timeout
        self.on_state = on_state
        self.password: str | None = None
        self.passphrase: str | None = None
        self.interactive = True
        self.state: TunnelState = "closed"
        """"connected", "reconnecting" or "closed"."""
        self.attempt = 0
        """The current reconnection attempt, counting from 1; 0 when connected."""
        self._forwards = [_Forward(Endpoint.parse(url)) for url in endpoints]
        self._connection: asyncssh.SSHClientConnection | None = None
        self._listeners: list[asyncssh.SSHListener] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def who(self) -> str:
        """``user@host`` as the header shows it."""
        user = self.username or (self._connection and self._connection.get_extra_info("username"))
        return f"{user}@{self.spec.host}" if user else self.spec.host

    @property
    def endpoints(self) -> list[str]:
        """The local URLs that reach each store endpoint through the tunnel."""
        return [forward.local_url for forward in self._forwards]

    @property
    def connection(self) -> asyncssh.SSHClientConnection:
        """The live SSH connection, for running remote commands."""
        if self._connection is None:
            raise TunnelLost(f"the tunnel to {self.spec} is down")
        return self._connection

    async def run(self, command: str, **kwargs: Any) -> asyncssh.SSHCompletedProcess:
        """Run ``command`` on the tunnel host once the tunnel is up."""
        await asyncio.wait_for(self._connected.wait(), self.timeout)
        return await self.connection.run(command, **kwargs)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"connect_timeout": self.timeout, "login_timeout": self.timeout}
        if self.spec.port:
            options["port"] = self.spec.port
        if self.username:
            options["username"] = self.username
        if self.identity:
            options["client_keys"] = [self.identity]
        if self.passphrase is not None:
            options["passphrase"] = self.passphrase
        if not self.strict:
            options["known_hosts"] = None
        elif self.known_hosts:
            options["known_hosts"] = self.known_hosts
        return options

    async def _dial(self) -> asyncssh.SSHClientConnection:
        """Connect and authenticate, asking for a key passphrase in the terminal if needed."""
        while True:
            try:
                return await asyncssh.connect(
                    self.spec.host, client_factory=lambda: _Prompting(self), **self._options()
                )
            except asyncssh.KeyImportError as error:
                if "passphrase" not in str(error).lower() or not self._can_prompt():
                    raise TunnelError(f"cannot use identity {self.identity}: {error}") from error
                self.passphrase = getpass.getpass(f"passphrase for {self.identity}: ")
            except asyncssh.HostKeyNotVerifiable as error:
                raise await self._untrusted(error) from error
            except asyncssh.PermissionDenied as error:
                raise TunnelError(
                    f"{self.who} refused every key offered (agent and identity files); "
                    f"check {self.identity_flag}, ssh-add -l, or the user name"
                ) from error
            except (OSError, asyncssh.Error, TimeoutError) as error:
                reason = _reason(error)
                raise TunnelError(f"cannot reach tunnel host {self.spec}: {reason}") from error

    def _can_prompt(self) -> bool:
        return self.interactive and self.passphrase is None and sys.stdin.isatty()

    async def _untrusted(self, error: Exception) -> HostKeyUntrusted:
        port = self.spec.port or 22
        fingerprint = "unknown fingerprint"
        with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(self.spec.host, port), self.timeout
            )
            if key is not None:
                fingerprint = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
        known = self.known_hosts or "~/.ssh/known_hosts"
        shown = known
        if self.known_hosts is None and self.known_hosts_label:
            shown = f"{known} ({self.known_hosts_label} does not exist, so ssh's file was read)"
        scan = f"ssh-keyscan -p {port} {self.spec.host} >> {self.known_hosts_label or known}"
        why = _host_key_problem(known, self.spec.host, port)
        return HostKeyUntrusted(
            f"the host key of {self.spec.host}:{port} ({fingerprint}) is not trusted: {why} "
            f"{shown} ({error}). If the fingerprint is right, trust it with `{scan}`, or pass "
            "--strict-host-key-checking=false"
        )

    async def _listen(self, connection: asyncssh.SSHClientConnection) -> None:
        listeners = []
        try:
            for forward in self._forwards:
                listener = await connection.forward_local_port(
                    "127.0.0.1", forward.local_port, forward.remote.host, forward.remote.port
                )
                forward.local_port = listener.get_port()
                listeners.append(listener)
        except (OSError, asyncssh.Error) as error:
            for listener in listeners:
                listener.close()
            raise TunnelError(f"cannot listen on a loopback port: {_reason(error)}") from error
        self._listeners = listeners

    async def open(self) -> Tunnel:
        """Connect, authenticate and start forwarding; raise :class:`TunnelError` on failure."""
        connection = await self._dial()
        try:
            await self._listen(connection)
        except TunnelError:
            connection.close()
            raise
        self._up(connection)
        # Later dials run behind the console's screen, where nobody can answer a prompt.
        self.interactive = False
        self._supervisor = asyncio.create_task(self._supervise(), name=f"tunnel {self.spec}")
        return self

    def _up(self, connection: asyncssh.SSHClientConnection) -> None:
        self._connection = connection
        self._connected.set()
        self.attempt = 0
        self._set_state("connected")

    def _set_state(self, state: TunnelState) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state, self.attempt)

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then redial with backoff until it is back."""
        while True:
            assert self._connection is not None
            await self._connection.wait_closed()
            self._connected.clear()
            self._connection = None
            for listener in self._listeners:
                listener.close()
            delay = 0.2
            while True:
                self.attempt += 1
                self._set_state("reconnecting")
                try:
                    connection = await self._dial()
                    await self._listen(connection)
                except TunnelError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self._up(connection)
                break

    async def close(self) -> None:
        """Stop forwarding and close the SSH connection."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for listener in self._listeners:
            listener.close()
        if self._connection is not None:
            self._connection.close()
            with contextlib.suppress(Exception):
                await self._connection.wait_closed()
        self._connection = None
        self._set_state("closed")


def _host_key_problem(path: str, host: str, port: int) -> str:
    """Whether ``host`` is absent from the known hosts file, or listed with another key."""
    try:
        known = asyncssh.read_known_hosts(os.path.expanduser(path))
        listed = any(known.match(host, "", port)[:3])
    except (OSError, ValueError, asyncssh.Error):
        return "it is not listed in"
    if listed:
        return "it CHANGED: another key is listed for it in"
    return "it is not listed in"


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _existing(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    expanded = os.path.expanduser(path)
    if not Path(expanded).is_file():
        raise TunnelError(f"{what} {expanded} does not exist")
    return expanded


async def open_tunnel(
    spec: str,
    endpoints: list[str],
    *,
    identity: str | None = None,
    known_hosts: str | None = None,
    strict: bool = True,
    username: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_state: Callable[[TunnelState, int], None] | None = None,
    identity_flag: str = "--identity",
    known_hosts_label: str | None = None,
) -> Tunnel:
    """Open a tunnel through ``[user@]host[:port]`` to each of ``endpoints``.

    ``endpoints`` are store URLs as the tunnel host sees them. The returned tunnel's
    :attr:`Tunnel.endpoints` are the loopback URLs to hand to the store client; its
    :attr:`Tunnel.connection` runs remote commands. ``~/.ssh/config`` and ssh-agent are
    honoured; host keys are checked against known_hosts unless ``strict`` is false.
    """
    tunnel = Tunnel(
        TunnelSpec.parse(spec),
        endpoints,
        identity=_existing(identity, "identity file"),
        known_hosts=_existing(known_hosts, "known hosts file"),
        strict=strict,
        username=username,
        timeout=timeout,
        on_state=on_state,
        identity_flag=identity_flag,
        known_hosts_label=known_hosts_label,
    )
    return await tunnel.open()
