"""Provides `clusterctl`: fleetctl's commands and output columns over the console's client code."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncssh

from backend.etcd import EtcdClient, EtcdError, diagnose, error_words, make_client
from backend.fleet.demo import clusterd_command
from backend.fleet.fence import fence_note
from backend.fleet.registry import (
    DEFAULT_PREFIX,
    ClusterState,
    Job,
    Machine,
    Registry,
    RegistryError,
    UnitExists,
    UnitState,
    current_state,
)
from backend.fleet.unitfile import (
    UnitFileError,
    UnitName,
    normalize_name,
    parse,
    unit_hash,
    validate_name,
)
from backend.fleet.validate import (
    cursor_problem,
    machine_problem,
    subnet_record_problem,
    unit_name_problem,
)
from backend.keys import prefix_end
from backend.text import literal
from backend.version import VERSION
from console.tunnel import Tunnel, TunnelError, TunnelSpec, open_tunnel

POLL_SECONDS = 0.5

# Global flags, their defaults, and how the environment names them (fleetctl's scheme:
# the flag name upper-cased with dashes as underscores, behind a prefix).
GLOBAL_FLAGS: dict[str, str] = {
    "endpoint": "http://127.0.0.1:2379",
    "tunnel": "",
    "ssh-username": "core",
    "ssh-port": "22",
    "ssh-identity-file": "",
    "known-hosts-file": "~/.fleetctl/known_hosts",
    "strict-host-key-checking": "true",
    "ssh-timeout": "10.0",
    "request-timeout": "3.0",
    "key-prefix": DEFAULT_PREFIX,
    "ca-file": "",
    "cert-file": "",
    "key-file": "",
    "remote-clusterd": "clusterd",
    "overlay-prefix": "/coreos.com/network/",
}

# etcdctl's and clustertui's names for the TLS flags, beside fleetctl's.
ALIASES = {"endpoint": ("--endpoints",), "ca-file": ("--cacert",), "cert-file": ("--cert",),
           "key-file": ("--key",)}  # fmt: skip


class CtlError(Exception):
    """A command failed; the message is printed to stderr (made literal)."""


class UnsafeValue(CtlError, ValueError):
    """A value read from the store cannot go on a command line: it failed validation."""


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


def machine_legend(machine: Machine | None, machine_id: str, full: bool) -> str:
    """``85c0c595.../172.17.8.102``: fleetctl's short machine ID with its public IP."""
    legend = machine_id if full else f"{machine_id[:8]}..."
    if machine is not None and machine.problem:
        legend = f"{legend}/invalid"
    elif machine is not None and machine.public_ip:
        legend = f"{legend}/{machine.public_ip}"
    return legend


def ssh_destination(machine: Machine) -> str:
    """The address ssh dials for ``machine``: its PublicIP, else its host name.

    Raises :class:`UnsafeValue` for an invalid record: its values never reach ssh.
    """
    check_machine(machine)
    destination = machine.public_ip or machine.hostname
    if not destination:
        raise UnsafeValue(f"Machine {machine.id} has neither a PublicIP nor a Hostname")
    return destination


def format_metadata(metadata: dict[str, str]) -> str:
    if not metadata:
        return "-"
    return ",".join(f"{key}={value}" for key, value in sorted(metadata.items()))


@dataclass
class LocalUnit:
    """A unit file found on disk for a name given on the command line."""

    name: str
    raw: str
    path: Path


def find_local_unit(arg: str) -> LocalUnit | None:
    """The unit file ``arg`` names on disk, or its template (``x@.service`` for ``x@1.service``)."""
    name = normalize_name(Path(arg).name)
    path = Path(arg)
    if not path.is_file():
        path = path.with_name(name)
    if path.is_file():
        return LocalUnit(name, _read_unit(path), path)
    parts = UnitName.parse(name)
    if parts.is_instance:
        template = path.with_name(parts.template)
        if template.is_file():
            return LocalUnit(name, _read_unit(template), template)
    return None


def _read_unit(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CtlError(f"failed reading unit file {path}: {error}") from error


class Ctl:
    """One clusterctl invocation: its options, its registry connection and its output streams."""

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
                strict=self._strict,
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
    def _strict(self) -> bool:
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

    async def list_machines(self) -> int:
        fields = _fields(
            self.args.fields, "machine,ip,metadata", ("machine", "ip", "metadata", "hostname")
        )
        machines = await self.machines()
        getters: dict[str, Callable[[Machine], str]] = {
            "machine": lambda m: m.id if self.args.full else f"{m.id[:8]}...",
            "ip": lambda m: f"invalid: {m.problem}" if m.problem else (m.public_ip or "-"),
            "metadata": lambda m: format_metadata(m.metadata),
            "hostname": lambda m: m.hostname or "-",
        }
        rows = [[getters[f](m) for f in fields] for _, m in sorted(machines.items())]
        self._table(fields, rows)
        return 0

    async def list_units(self) -> int:
        fields = _fields(
            self.args.fields,
            "unit,machine,active,sub",
            ("unit", "machine", "active", "sub", "load", "hash"),
        )
        states = await self.registry.unit_states()
        machines = await self.machines()
        full = self.args.full
        getters: dict[str, Callable[[UnitState, str], str]] = {
            "unit": lambda s, name: name,
            "machine": lambda s, name: machine_legend(
                machines.get(s.machine_id), s.machine_id, full
            ),
            "active": lambda s, name: s.active_state or "-",
            "sub": lambda s, name: s.sub_state or "-",
            "load": lambda s, name: s.load_state or "-",
            "hash": lambda s, name: (s.unit_hash if full else s.unit_hash[:7]) or "-",
        }
        rows = [
            [getters[f](state, name) for f in fields]
            for name, by_machine in sorted(states.items())
            for _, state in sorted(by_machine.items())
        ]
        self._table(fields, rows)
        return 0

    async def list_unit_files(self) -> int:
        fields = _fields(
            self.args.fields,
            "unit,hash,dstate,state,target",
            ("unit", "hash", "dstate", "state", "target", "global", "desc"),
        )
        state = await self.registry.snapshot(("job", "unit", "machines", "states"))
        full = self.args.full
        rows = []
        for name, job in sorted(state.jobs.items()):
            is_global = _is_global(job)
            values = {
                "unit": name,
                "hash": job.unit_hash if full else job.unit_hash[:7],
                "dstate": job.target_state or "-",
                "state": "-" if is_global else current_state(job, state.states.get(name, {})),
                "target": "global"
                if is_global
                else (
                    machine_legend(state.machines.get(job.target), job.target, full)
                    if job.target
                    else "-"
                ),
                "global": str(is_global).lower(),
                "desc": (job.unit.description(name) if job.unit else "") or "-",
            }
            rows.append([values[f] for f in fields])
        self._table(fields, rows)
        return 0

    async def list_subnets(self) -> int:
        fields = ["subnet", "machine", "public-ip", "backend", "expires"]
        if self.args.full:
            fields.append("vtep-mac")
        base = (self.args.overlay_prefix.rstrip("/") + "/subnets/").encode()
        await self.client.connect()
        response = await self.registry.read_range(base, prefix_end(base))
        machines = await self.machines()
        by_ip: dict[str, list[str]] = {}
        for machine in machines.values():
            by_ip.setdefault(machine.public_ip, []).append(machine.id)
        rows = []
        for kv in response.kvs:
            subnet = kv.key.decode(errors="replace")[len(base) :].replace("-", "/")
            try:
                value = json.loads(kv.value)
            except ValueError:
                value = {}
            if not isinstance(value, dict):
                value = {}
            public_ip = str(value.get("PublicIP", "")) or "-"
            problem = subnet_record_problem(value) if value else ""
            if problem:
                public_ip = f"invalid: {problem}"
            backend_data = value.get("BackendData")
            if not isinstance(backend_data, dict):
                backend_data = {}
            owner = str(backend_data.get("MachineID", "")) or (
                by_ip.get(public_ip, [""])[0] if len(by_ip.get(public_ip, [])) == 1 else ""
            )
            machine = (owner if self.args.full else f"{owner[:8]}...") if owner else "-"
            backend = str(value.get("BackendType", "")) or "-"
            expires = await self._expiry(kv.lease)
            rows.append([subnet, machine, public_ip, backend, expires])
            if self.args.full:
                rows[-1].append(str(backend_data.get("VtepMAC", "")) or "-")
        self._table(fields, rows)
        return 0

    async def _expiry(self, lease: int) -> str:
        if not lease:
            return "reserved"
        try:
            info = await self.client.get_lease_info(lease, keys=False)
        except EtcdError:
            return "-"
        if info.TTL <= 0:
            return "expired"
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=info.TTL)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _table(self, fields: Sequence[str], rows: list[list[str]]) -> None:
        if not self.args.no_legend:
            rows = [[f.upper() for f in fields], *rows]
        # Every cell comes from the store: escapes show as text, never reach the terminal.
        rows = [[literal(cell) for cell in row] for row in rows]
        self.out.write(tabulate(rows))
        self.out.flush()

    # -- unit lifecycle ---------------------------------------------------------------

    async def lazy_create(self, args: Sequence[str], *, replace: bool) -> list[str]:
        """Make sure each named unit is in the registry, submitting local files as needed."""
        names = []
        for arg in args:
            name = normalize_name(Path(arg).name)
            try:
                validate_name(name)
            except UnitFileError as error:
                raise CtlError(f"Error creating units: {error}") from None
            if UnitName.parse(name).is_template:
                raise CtlError(f"Error creating units: unable to start template unit {name}")
            local = find_local_unit(arg)
            existing = await self.registry.job(name)
            if existing is not None and (local is None or not replace):
                if local is not None and existing.unit_hash != unit_hash(local.raw):
                    self.warn(
                        f"WARNING: Unit {name} in registry differs from local unit file {arg}"
                    )
                names.append(name)
                continue
            if local is None:
                template = UnitName.parse(name).template
                if UnitName.parse(name).is_instance:
                    source = await self.registry.job(template)
                    if source is not None and source.unit is not None:
                        await self._create(name, source.unit.raw, replace=replace)
                        names.append(name)
                        continue
                    raise CtlError(
                        f"Error creating units: unable to find Unit({name}) or template "
                        f"Unit({template}) in Registry or on filesystem"
                    )
                raise CtlError(
                    f"Error creating units: unable to find Unit({name}) "
                    "in Registry or on filesystem"
                )
            await self._create(name, local.raw, replace=replace)
            names.append(name)
        return names

    async def _create(self, name: str, raw: str, *, replace: bool) -> None:
        try:
            parse(raw, name)
        except UnitFileError as error:
            raise CtlError(f"Error creating units: {error}") from None
        try:
            await self.registry.create_job(name, raw, replace=replace)
        except UnitExists as error:
            raise CtlError(f"Error creating units: {error}") from None

    async def submit(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        await self.lazy_create(self.args.units, replace=self.args.replace)
        return 0

    async def set_and_wait(
        self, names: Sequence[str], target: str, verb: str, want: str, skip_same: bool
    ) -> int:
        jobs = (await self.registry.snapshot(("job", "unit"))).jobs
        waiting = []
        for name in names:
            job = jobs.get(name)
            if job is None:
                raise CtlError(f"unable to find unit {name}")
            if skip_same and job.target_state == target:
                if not _is_global(job):
                    waiting.append(name)
                continue
            await self.registry.set_target_state(name, target)
            if _is_global(job):
                self.say(f"Triggered global unit {name} {verb}")
            else:
                waiting.append(name)
        return await self.wait_for(waiting, verb, want)

    def _block_attempts(self) -> int:
        if getattr(self.args, "no_block", False):
            return -1
        return max(0, int(getattr(self.args, "block_attempts", 0) or 0))

    async def wait_for(self, names: Sequence[str], verb: str, want: str) -> int:
        """fleetctl's blocking: poll until each unit reports ``want``, or attempts run out."""
        attempts = self._block_attempts()
        if attempts < 0:
            for name in names:
                self.say(f"Triggered unit {name} {verb}")
            return 0
        remaining = list(names)
        tries = 0
        while remaining:
            state = await self.registry.snapshot(("job", "machines", "states"))
            for name in list(remaining):
                job = state.jobs.get(name) or Job(name)
                current = current_state(job, state.states.get(name, {}))
                if want == "inactive" and job.target:
                    # Unloaded means unscheduled too: wait for the engine to clear the target.
                    current = "loaded"
                if current == want:
                    remaining.remove(name)
                    message = f"Unit {name} {current}"
                    if job.target and job.target in state.machines:
                        legend = machine_legend(state.machines[job.target], job.target, False)
                        message += f" on {legend}"
                    self.say(message)
            tries += 1
            if not remaining:
                break
            if attempts and tries >= attempts:
                for name in remaining:
                    self.warn(
                        f"Error waiting for units: timed out waiting for unit {name} "
                        f"to report state {want}"
                    )
                return 1
            await asyncio.sleep(POLL_SECONDS)
        return 0

    async def load(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        names = await self.lazy_create(self.args.units, replace=self.args.replace)
        return await self.set_and_wait(names, "loaded", "load", "loaded", True)

    async def start(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        names = await self.lazy_create(self.args.units, replace=self.args.replace)
        return await self.set_and_wait(names, "launched", "start", "launched", True)

    async def _registered(self, args: Sequence[str]) -> tuple[ClusterState, list[str]]:
        state = await self.registry.snapshot(("job", "unit", "states"))
        names = [normalize_name(Path(a).name) for a in args]
        return state, [n for n in names if n in state.jobs]

    async def stop(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        state, names = await self._registered(self.args.units)
        stopping = []
        for name in names:
            job = state.jobs[name]
            if not _is_global(job):
                current = current_state(job, state.states.get(name, {}))
                if current == "inactive":
                    self.warn(f"Unable to stop unit {name} in state inactive")
                    return 1
                if current == "loaded" and job.target_state != "launched":
                    continue
            await self.registry.set_target_state(name, "loaded")
            if _is_global(job):
                self.say(f"Triggered global unit {name} stop")
            else:
                stopping.append(name)
        code = await self.wait_for(stopping, "stop", "loaded")
        listed = "[" + " ".join(stopping) + "]"
        if code == 0:
            self.warn(f"Successfully stopped units {listed}.")
        else:
            self.warn(f"Failed to stop units {listed}. exit == {code}.")
        return code

    async def unload(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        state, names = await self._registered(self.args.units)
        unloading = []
        for name in names:
            job = state.jobs[name]
            if job.target_state == "inactive":
                continue
            await self.registry.set_target_state(name, "inactive")
            if _is_global(job):
                self.say(f"Triggered global unit {name} unload")
            else:
                unloading.append(name)
        code = await self.wait_for(unloading, "unload", "inactive")
        listed = "[" + " ".join(unloading) + "]"
        if code == 0:
            self.warn(f"Successfully unloaded units {listed}.")
        else:
            self.warn(f"Failed to unload units {listed}. exit == {code}.")
        return code

    async def destroy(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        for arg in self.args.units:
            name = normalize_name(Path(arg).name)
            if await self.registry.destroy(name):
                self.say(f"Destroyed {name}")
        return 0

    async def restart(self) -> int:
        if not self.args.units:
            self.warn("No units given")
            return 0
        _, names = await self._registered(self.args.units)
        missing = [normalize_name(Path(a).name) for a in self.args.units]
        missing = [n for n in missing if n not in names]
        if missing:
            raise CtlError(f"Error restarting units: unable to find unit {missing[0]}")
        code = await self.set_and_wait(names, "loaded", "stop", "loaded", False)
        if code:
            return code
        return await self.set_and_wait(names, "launched", "start", "launched", False)

    # -- one unit ---------------------------------------------------------------------

    async def cat(self) -> int:
        name = normalize_name(self.args.unit)
        job = await self.registry.job(name)
        if job is None or job.unit is None:
            raise CtlError(f"Unit {name} not found")
        self.out.write(literal(job.unit.raw, lines=True))
        if not job.unit.raw.endswith("\n"):
            self.out.write("\n")
        return 0

    async def status(self) -> int:
        code = 0
        for arg in self.args.units:
            name = normalize_name(Path(arg).name)
            _check_unit_name(name)
            state = await self.registry.snapshot(("job", "unit", "machines", "states"))
            job = state.jobs.get(name)
            if job is None:
                self.warn(f"Unit {name} does not exist.")
                code = 1
                continue
            self._status_block(job, state)
            reported = state.states.get(name, {}).get(job.target) if job.target else None
            if (reported is None or reported.active_state != "active") and code == 0:
                # systemctl status (which fleetctl status runs) exits 3 for a unit not active.
                code = 3
            machine = state.machines.get(job.target) if job.target else None
            if machine is not None:
                try:
                    lines = self.journal_command(machine, name, lines=self.args.lines, follow=False)
                except UnsafeValue as error:
                    # The state is shown; the machine is not dialled.
                    self.warn(f"Not reading the journal: {error}")
                    code = code or 1
                    continue
                _, text = await self._run_on(machine, lines, capture=True)
                if text.strip():
                    self.say("")
                    self.out.write(literal(text, lines=True))
                    self.out.flush()
        return code

    def _status_block(self, job: Job, state: ClusterState) -> None:
        name = job.name
        description = job.unit.description(name) if job.unit else ""
        reported = state.states.get(name, {}).get(job.target) if job.target else None
        mark = "●" if reported and reported.active_state == "active" else "○"
        self.say(f"{mark} {name}" + (f" - {description}" if description else ""))
        self.say(
            f"   Loaded: {reported.load_state if reported else 'not-found'} "
            f"(target state {job.target_state}; hash {job.unit_hash[:7]})"
        )
        if reported:
            self.say(f"   Active: {reported.active_state} ({reported.sub_state})")
        else:
            self.say("   Active: inactive (dead)")
        if _is_global(job):
            machines = sorted(state.states.get(name, {}))
            self.say(f"  Machine: global ({len(machines)} machines)")
        elif job.target:
            machine = state.machines.get(job.target)
            self.say(f"  Machine: {machine_legend(machine, job.target, True)}")
            if machine is not None and machine.problem:
                self.say(f"  Invalid: {machine.problem}")
        else:
            self.say("  Machine: -")
        if job.reason:
            self.say(f"   Reason: {job.reason}")
        if fence_note(state.states.get(name, {})):
            self.say(f"   {fence_note(state.states.get(name, {}))}")

    def journal_command(
        self, machine: Machine, unit: str, *, lines: int, follow: bool, output: str = ""
    ) -> list[str]:
        return journal_command(machine, [unit], lines=str(lines), follow=follow, output=output)

    def _is_local(self, machine: Machine) -> bool:
        return is_local(machine, tunnelled=bool(self.args.tunnel))

    def ssh_argv(self, machine: Machine, remote: str, *, tty: bool = False) -> list[str]:
        """The OpenSSH command line that reaches ``machine``, through the tunnel host if any."""
        argv = ["ssh", *self._ssh_options(), "-p", str(self.args.ssh_port)]
        argv += ["-l", self.args.ssh_username]
        if self.args.tunnel:
            # A ProxyCommand rather than -J, so the hop uses the same key and known hosts.
            host, port, user = self._tunnel_parts()
            hop = ["ssh", *self._ssh_options(), "-p", str(port), "-l", user, "-W", "%h:%p", host]
            argv += ["-o", "ProxyCommand=" + shlex.join(hop)]
        argv.append("-t" if tty else "-T")
        # `--` ends ssh's options: the destination can never be read as one.
        argv += ["--", ssh_destination(machine)]
        if remote:
            argv.append(remote)
        return argv

    def _ssh_options(self) -> list[str]:
        options = [
            "-o", f"StrictHostKeyChecking={'yes' if self._strict else 'no'}",
            "-o", f"ConnectTimeout={max(1, round(float(self.args.ssh_timeout)))}",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        known_hosts = self._known_hosts()
        if known_hosts:
            options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if self.args.ssh_identity_file:
            options += ["-i", os.path.expanduser(self.args.ssh_identity_file)]
        return options

    def _tunnel_parts(self) -> tuple[str, int, str]:
        spec = TunnelSpec.parse(self.args.tunnel)
        return spec.host, spec.port or 22, spec.username or self.args.ssh_username

    async def _run_on(
        self, machine: Machine, command: list[str], *, capture: bool
    ) -> tuple[int, str]:
        """Run a ``clusterd`` command on ``machine``: here when it is this host, else over SSH."""
        env: dict[str, str] | None
        if self._is_local(machine):
            argv, env = local_clusterd(command)
        else:
            remote = self.args.remote_clusterd + " " + shlex.join(command[1:])
            argv = self.ssh_argv(machine, remote)
            env = None
        return await _run(argv, env=env, out=None if capture else self.out)

    async def journal(self) -> int:
        name = normalize_name(self.args.unit)
        _check_unit_name(name)
        state = await self.registry.snapshot(("job", "unit", "machines", "states"))
        job = state.jobs.get(name)
        if job is None:
            raise CtlError(f"Unit {name} does not exist.")
        target = job.target
        if _is_global(job):
            # A global unit runs everywhere: this host's copy if it has one, else the first.
            hosts = sorted(m for m in state.states.get(name, {}) if m in state.machines)
            local = [m for m in hosts if self._is_local(state.machines[m])]
            target = (local or hosts or [""])[0]
        if not target:
            raise CtlError(f"Unit {name} does not appear to be running.")
        machine = state.machines.get(target)
        if machine is None:
            raise CtlError(f"Machine {target} of unit {name} is not in the cluster.")
        command = self.journal_command(
            machine, name, lines=self.args.lines, follow=self.args.follow, output=self.args.output
        )
        code, _ = await self._run_on(machine, command, capture=False)
        return code

    async def ssh(self) -> int:
        target = self.args.target
        machines = await self.machines()
        machine = machines.get(target)
        if machine is None:
            matches = [m for i, m in machines.items() if i.startswith(target)]
            if len(matches) > 1:
                raise CtlError(f"Found more than one machine matching {target!r}")
            machine = matches[0] if matches else None
        if machine is None:
            job = await self.registry.job(normalize_name(target))
            if job is not None and job.target:
                machine = machines.get(job.target)
            if machine is None:
                raise CtlError(f"Could not find machine or unit {target!r}")
        # Like ssh itself, the words of the command go to the remote shell as one line.
        remote = " ".join(self.args.remote)
        argv = self.ssh_argv(machine, remote, tty=not remote and sys.stdin.isatty())
        code, _ = await _run(argv, env=None, out=self.out, stdin=True)
        return code


async def _run(
    argv: list[str],
    *,
    env: dict[str, str] | None,
    out: TextIO | None = None,
    stdin: bool = False,
) -> tuple[int, str]:
    """Run ``argv``; stream its stdout into ``out`` as it comes, or collect it when None.

    When ``out`` is the terminal's own stdout the child writes there directly, so an
    interactive ssh session or a followed journal behaves as if run by hand.
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
        raise CtlError(f"failed running {argv[0]}: {error.strerror}") from error
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
        _check_unit_name(unit)
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


def check_machine(machine: Machine) -> None:
    """Raise :class:`UnsafeValue` unless ``machine`` passes validation (read or built here)."""
    problem = machine.problem or machine_problem(machine)
    if problem:
        raise UnsafeValue(f"Machine {machine.id} is invalid: {problem}")


def _check_unit_name(name: str) -> None:
    problem = unit_name_problem(name)
    if problem:
        raise UnsafeValue(f"Unit name refused: {problem}")


def is_local(machine: Machine, *, tunnelled: bool) -> bool:
    """Whether ``machine`` is this host, so its commands run here rather than over SSH."""
    return bool(machine.hostname) and machine.hostname == socket.gethostname() and not tunnelled


def local_clusterd(command: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run a ``clusterd …`` command with this checkout's code."""
    argv = [*clusterd_command(), *command[1:]]
    return argv, {**os.environ, "PYTHONPATH": _repo_path()}


def _repo_path() -> str:
    return str(Path(__file__).resolve().parents[1])


def _is_global(job: Job) -> bool:
    if job.unit is None:
        return False
    try:
        return job.unit.fleet(job.name).is_global
    except ValueError:
        return False


def _fields(text: str | None, default: str, valid: Sequence[str]) -> list[str]:
    fields = (default if text is None else text).split(",")
    if fields == [""]:
        raise CtlError("Must define output format")
    for field in fields:
        if field not in valid:
            raise CtlError(f"Invalid key in output format: {field!r}")
    return fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterctl",
        description="fleetctl-compatible cluster control. Every global flag can also come from "
        "CLUSTERCTL_<FLAG> (or FLEETCTL_<FLAG>), e.g. CLUSTERCTL_ENDPOINT.",
    )
    for flag, default in GLOBAL_FLAGS.items():
        names = [f"--{flag}", *ALIASES.get(flag, ())]
        parser.add_argument(*names, default=None, help=f"default {default!r}")
    parser.add_argument("--version", action="version", version=f"clusterctl version {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def listing(name: str, summary: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=summary)
        command.add_argument("-l", "--full", action="store_true", help="do not ellipsize fields")
        command.add_argument("--no-legend", action="store_true", help="do not print a legend")
        command.add_argument("--fields", default=None, help="columns to print, comma-separated")
        return command

    listing("list-machines", "enumerate the current hosts in the cluster")
    listing("list-units", "list the current state of units in the cluster")
    listing("list-unit-files", "list the units that exist in the cluster")
    subnets = sub.add_parser("list-subnets", help="list the overlay subnets and their leases")
    subnets.add_argument("-l", "--full", action="store_true")
    subnets.add_argument("--no-legend", action="store_true")

    def lifecycle(name: str, summary: str, block_default: int, blocking: bool = True) -> None:
        command = sub.add_parser(name, help=summary)
        command.add_argument("units", nargs="*", metavar="UNIT")
        command.add_argument("--replace", action="store_true", help="replace differing units")
        if blocking:
            command.add_argument("--no-block", action="store_true", help="do not wait")
            command.add_argument(
                "--block-attempts", type=int, default=block_default, help="0 waits forever"
            )

    lifecycle("submit", "upload one or more units to the cluster", 0, blocking=False)
    lifecycle("load", "schedule units to machines without starting them", 0)
    lifecycle("start", "start units, submitting and loading them if necessary", 0)
    lifecycle("stop", "stop units, leaving them loaded", 0)
    lifecycle("unload", "unschedule units from their machines", 0)
    lifecycle("destroy", "destroy units, removing them from the cluster", 0, blocking=False)
    lifecycle("restart", "stop, then start units", 0)
    status = sub.add_parser("status", help="state of units and their last journal lines")
    status.add_argument("units", nargs="+", metavar="UNIT")
    status.add_argument("--lines", "-n", type=int, default=10)
    cat = sub.add_parser("cat", help="print the unit file as the cluster holds it")
    cat.add_argument("unit", metavar="UNIT")
    journal = sub.add_parser("journal", help="print the journal of a unit, from its machine")
    journal.add_argument("unit", metavar="UNIT")
    journal.add_argument("--lines", "-n", type=int, default=10, help="lines to show")
    journal.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    journal.add_argument("-o", "--output", default="", help="journalctl output format")
    ssh = sub.add_parser("ssh", help="open a shell on (or run a command on) a machine")
    ssh.add_argument("target", metavar="MACHINE|UNIT")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    return parser


def apply_environment(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Fill unset global flags from CLUSTERCTL_<FLAG>, then FLEETCTL_<FLAG>, then defaults."""
    for flag, default in GLOBAL_FLAGS.items():
        attribute = flag.replace("-", "_")
        if getattr(args, attribute) is not None:
            continue
        suffix = attribute.upper()
        value = environ.get(f"CLUSTERCTL_{suffix}") or environ.get(f"FLEETCTL_{suffix}")
        setattr(args, attribute, value if value else default)


COMMANDS: dict[str, Callable[[Ctl], object]] = {
    "list-machines": Ctl.list_machines,
    "list-units": Ctl.list_units,
    "list-unit-files": Ctl.list_unit_files,
    "list-subnets": Ctl.list_subnets,
    "submit": Ctl.submit,
    "load": Ctl.load,
    "start": Ctl.start,
    "stop": Ctl.stop,
    "unload": Ctl.unload,
    "destroy": Ctl.destroy,
    "restart": Ctl.restart,
    "status": Ctl.status,
    "cat": Ctl.cat,
    "journal": Ctl.journal,
    "ssh": Ctl.ssh,
}


async def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one parsed command; errors become a message on ``err`` and exit status 1."""
    try:
        ctl = Ctl(args, out, err)
    except EtcdError as error:
        print(f"Unable to initialize client: {error}", file=err)
        return 1
    try:
        await ctl.open_tunnel()
        return int(await COMMANDS[args.command](ctl))  # type: ignore[call-overload]
    except CtlError as error:
        print(literal(str(error)), file=err)
        return 1
    except EtcdError as error:
        typed = await diagnose(ctl.client, error)
        endpoints = [url for url in args.endpoint.split(",") if url.strip()]
        words = error_words(
            typed,
            endpoints,
            timeout=float(args.request_timeout),
            waited_for=f"the store's reply to {args.command}",
            wait_longer="raise --request-timeout",
        )
        print(literal(f"Error: {words}"), file=err)
        return 1
    except RegistryError as error:
        print(literal(f"Error: {error}"), file=err)
        return 1
    finally:
        await ctl.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"clusterctl version {VERSION}")
        return 0
    apply_environment(args, dict(os.environ))
    try:
        return asyncio.run(execute(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
