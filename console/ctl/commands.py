"""Provides clusterctl's commands: fleetctl's verbs and output columns, thin over the model."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncssh

from backend.etcd import EtcdClient, EtcdError, diagnose, error_words, make_client
from backend.fleet.model import (
    ClusterState,
    CurrentState,
    Job,
    Machine,
    SubnetRecord,
    TargetState,
    UnitState,
    UnsafeValue,
    current_state,
    format_metadata,
    is_global,
    listed_state,
    machine_legend,
    status_block,
    subnet_owner,
)
from backend.fleet.registry import Registry, RegistryError, UnitExists
from backend.fleet.unitfile import (
    UnitFileError,
    UnitName,
    normalize_name,
    parse,
    unit_hash,
    validate_name,
)
from backend.keys import prefix_end
from backend.text import literal
from console.access import (
    Hop,
    RunError,
    SshRoute,
    check_unit_name,
    is_local,
    journal_command,
    local_clusterd,
    remote_command,
    run,
)
from console.ctl.args import (
    VERSION,
    ArgumentError,
    apply_environment,
    build_parser,
)
from console.ctl.args import fields as _fields
from console.tunnel import Tunnel, TunnelError, TunnelSpec, open_tunnel

POLL_SECONDS = 0.5


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
            global_ = is_global(job)
            values = {
                "unit": name,
                "hash": job.unit_hash if full else job.unit_hash[:7],
                "dstate": job.target_state or "-",
                "state": listed_state(job, state.states.get(name, {})),
                "target": "global"
                if global_
                else (
                    machine_legend(state.machines.get(job.target), job.target, full)
                    if job.target
                    else "-"
                ),
                "global": str(global_).lower(),
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
        rows = []
        for kv in response.kvs:
            subnet = kv.key.decode(errors="replace")[len(base) :].replace("-", "/")
            record = SubnetRecord.decode(kv.value)
            public_ip = f"invalid: {record.problem}" if record.problem else record.public_ip or "-"
            owner = subnet_owner(record, machines)
            machine = (owner if self.args.full else f"{owner[:8]}...") if owner else "-"
            backend = record.backend or "-"
            expires = await self._expiry(kv.lease)
            rows.append([subnet, machine, public_ip, backend, expires])
            if self.args.full:
                rows[-1].append(record.vtep_mac or "-")
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
        self,
        names: Sequence[str],
        target: TargetState,
        verb: str,
        want: CurrentState,
        skip_same: bool,
    ) -> int:
        jobs = (await self.registry.snapshot(("job", "unit"))).jobs
        waiting = []
        for name in names:
            job = jobs.get(name)
            if job is None:
                raise CtlError(f"unable to find unit {name}")
            if skip_same and job.target_state == target:
                if not is_global(job):
                    waiting.append(name)
                continue
            await self.registry.set_target_state(name, target)
            if is_global(job):
                self.say(f"Triggered global unit {name} {verb}")
            else:
                waiting.append(name)
        return await self.wait_for(waiting, verb, want)

    def _block_attempts(self) -> int:
        if getattr(self.args, "no_block", False):
            return -1
        return max(0, int(getattr(self.args, "block_attempts", 0) or 0))

    async def wait_for(self, names: Sequence[str], verb: str, want: CurrentState) -> int:
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
            if not is_global(job):
                current = current_state(job, state.states.get(name, {}))
                if current == "inactive":
                    self.warn(f"Unable to stop unit {name} in state inactive")
                    return 1
                if current == "loaded" and job.target_state != "launched":
                    continue
            await self.registry.set_target_state(name, "loaded")
            if is_global(job):
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
            if is_global(job):
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
            check_unit_name(name)
            state = await self.registry.snapshot(("job", "unit", "machines", "states"))
            job = state.jobs.get(name)
            if job is None:
                self.warn(f"Unit {name} does not exist.")
                code = 1
                continue
            for line in status_block(job, state):
                self.say(line)
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

    def journal_command(
        self, machine: Machine, unit: str, *, lines: int, follow: bool, output: str = ""
    ) -> list[str]:
        return journal_command(machine, [unit], lines=str(lines), follow=follow, output=output)

    def _is_local(self, machine: Machine) -> bool:
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
            strict=self._strict,
            connect_timeout=max(1, round(float(self.args.ssh_timeout))),
            batch=True,
            hop=hop,
        )

    async def _run_on(
        self, machine: Machine, command: list[str], *, capture: bool
    ) -> tuple[int, str]:
        """Run a ``clusterd`` command on ``machine``: here when it is this host, else over SSH."""
        env: dict[str, str] | None
        if self._is_local(machine):
            argv, env = local_clusterd(command)
        else:
            remote = remote_command(self.args.remote_clusterd, command)
            argv = self.ssh_route().argv(machine, remote, tty=False)
            env = None
        return await run(argv, env=env, out=None if capture else self.out)

    async def journal(self) -> int:
        name = normalize_name(self.args.unit)
        check_unit_name(name)
        state = await self.registry.snapshot(("job", "unit", "machines", "states"))
        job = state.jobs.get(name)
        if job is None:
            raise CtlError(f"Unit {name} does not exist.")
        target = job.target
        if is_global(job):
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
        argv = self.ssh_route().argv(machine, remote, tty=not remote and sys.stdin.isatty())
        code, _ = await run(argv, env=None, out=self.out, stdin=True)
        return code


COMMANDS: dict[str, Callable[[Ctl], Awaitable[int]]] = {
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
        return await COMMANDS[args.command](ctl)
    except (CtlError, ArgumentError, UnsafeValue, RunError) as error:
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
