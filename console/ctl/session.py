"""Provides one clusterctl invocation's session: store client, tunnel, ssh route, output."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import asyncssh

from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.backend.fleet.model import Machine
from clustertui.backend.fleet.registry import Registry
from clustertui.backend.text import literal
from clustertui.console.access import (
    Hop,
    SshRoute,
    is_local,
    journal_command,
    local_clusterd,
    remote_command,
    run,
)
from clustertui.console.tunnel import Tunnel, TunnelError, TunnelSpec, open_tunnel


class CtlError(Exception):
    """A command failed; the message is printed to stderr (made literal)."""


def tabulate(rows: Sequence[Sequence[str]], tabwidth: int = 8) -> str:
    """Lay out rows the way Go's tabwriter does with a tab pad character (fleetctl's output).

    Every column but the last is padded with tabs to a common width: the widest cell plus
    one, rounded up to a multiple of the tab width.
    """
    if not rows:
        return ""
    columns = max(len(row) for row in rows)
    widths = [0] * columns
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell) + 1)
    lines = []
    for row in rows:
        parts = []
        for index, cell in enumerate(row):
            if index == len(row) - 1:
                parts.append(cell)
                continue
            width = -(-widths[index] // tabwidth) * tabwidth
            parts.append(cell + "\t" * -(-(width - len(cell)) // tabwidth))
        lines.append("".join(parts))
    return "\n".join(lines) + "\n"


class Session:
    """One clusterctl invocation: its options, its store connection (through the tunnel, if
    any), how it reaches machines, and its output streams."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.tunnel: Tunnel | None = None
        self.client = self._client(args.endpoint)
        self.registry = Registry(self.client, args.key_prefix)
        self._machines: dict[str, Machine] | None = None

    def _client(self, endpoints: str | list[str]) -> EtcdClient:
        return make_client(
            endpoints,
            cacert=self.args.ca_file or None,
            cert=self.args.cert_file or None,
            key=self.args.key_file or None,
            timeout=float(self.args.request_timeout),
        )

    async def open_tunnel(self) -> None:
        """With --tunnel, reach the store through SSH port forwards on the tunnel host."""
        if not self.args.tunnel:
            return
        endpoints = [url for url in self.args.endpoint.split(",") if url.strip()]
        known_hosts = self._known_hosts()
        try:
            self.tunnel = await open_tunnel(
                self.args.tunnel,
                endpoints,
                identity=self.args.ssh_identity_file or None,
                known_hosts=known_hosts,
                strict=self.strict,
                username=self.args.ssh_username,
                timeout=float(self.args.ssh_timeout),
                identity_flag="--ssh-identity-file",
                known_hosts_label=self.args.known_hosts_file,
            )
        except (TunnelError, OSError, asyncssh.Error) as error:
            raise CtlError(
                f"Unable to initialize client: failed initializing SSH client: {error}"
            ) from error
        await self.client.close()
        self.client = self._client(self.tunnel.endpoints)
        self.registry = Registry(self.client, self.args.key_prefix)

    async def close(self) -> None:
        await self.client.close()
        if self.tunnel is not None:
            await self.tunnel.close()

    def _known_hosts(self) -> str | None:
        """The known hosts file, or None (ssh's defaults) when fleetctl's default is absent."""
        path = Path(self.args.known_hosts_file).expanduser()
        return str(path) if path.is_file() else None

    @property
    def strict(self) -> bool:
        return str(self.args.strict_host_key_checking).lower() in ("1", "true", "yes")

    def say(self, text: str) -> None:
        print(literal(text), file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(literal(text), file=self.err, flush=True)

    async def machines(self) -> dict[str, Machine]:
        if self._machines is None:
            self._machines = await self.registry.machines()
        return self._machines

    # -- listings ---------------------------------------------------------------------

    def table(self, fields: Sequence[str], rows: list[list[str]]) -> None:
        if not self.args.no_legend:
            rows = [[f.upper() for f in fields], *rows]
        # Every cell comes from the store: escapes show as text, never reach the terminal.
        rows = [[literal(cell) for cell in row] for row in rows]
        self.out.write(tabulate(rows))
        self.out.flush()

    # -- unit lifecycle ---------------------------------------------------------------

    def journal_command(
        self, machine: Machine, unit: str, *, lines: int, follow: bool, output: str = ""
    ) -> list[str]:
        return journal_command(machine, [unit], lines=str(lines), follow=follow, output=output)

    def is_local(self, machine: Machine) -> bool:
        return is_local(machine, tunnelled=bool(self.args.tunnel))

    def ssh_route(self) -> SshRoute:
        """OpenSSH's options from the flags: never prompting, through the tunnel host if any."""
        hop = None
        if self.args.tunnel:
            spec = TunnelSpec.parse(self.args.tunnel)
            hop = Hop(spec.host, spec.port or 22, spec.username or self.args.ssh_username)
        try:
            port = int(self.args.ssh_port)
        except ValueError:
            raise CtlError(f"invalid --ssh-port {self.args.ssh_port!r}") from None
        return SshRoute(
            port=port,
            username=self.args.ssh_username,
            identity=self.args.ssh_identity_file or None,
            known_hosts=self._known_hosts(),
            strict=self.strict,
            connect_timeout=max(1, round(float(self.args.ssh_timeout))),
            batch=True,
            hop=hop,
        )

    async def run_on(
        self, machine: Machine, command: list[str], *, capture: bool
    ) -> tuple[int, str]:
        """Run a ``clusterd`` command on ``machine``: here when it is this host, else over SSH."""
        if self.is_local(machine):
            argv = local_clusterd(command)
        else:
            remote = remote_command(self.args.remote_clusterd, command)
            argv = self.ssh_route().argv(machine, remote, tty=False)
        return await run(argv, out=None if capture else self.out)
