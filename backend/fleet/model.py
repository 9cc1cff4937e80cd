"""Provides fleet's model of the cluster and the views derived from it, for every front end.

One :class:`ClusterState` holds what fleet's and flannel's keys say (machines, jobs, the
states agents report, subnets, the engine leader). :class:`~backend.fleet.registry.Registry`
fills one from a snapshot read; the console keeps one up to date from watch events through
:meth:`ClusterState.absorb` and :meth:`ClusterState.forget`. ``clusterctl`` and the console
panes read the rules below (global units, current states, machine labels, placement, the
status block, subnet owners, the ssh target) and keep no copy of them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from clustertui.backend.fleet.unitfile import UnitFile
from clustertui.backend.fleet.validate import (
    machine_problem,
    subnet_record_problem,
    unit_name_problem,
)
from clustertui.backend.overlay.lease import parse_subnet_key

TargetState = Literal["inactive", "loaded", "launched"]
"""A desired state clients may write (``job/<unit>/target-state``)."""
CurrentState = Literal["inactive", "loaded", "launched"]
"""fleet's current state of a unit: not running anywhere, loaded but stopped, running."""
TARGET_STATES: tuple[TargetState, ...] = get_args(TargetState)


class UnsafeValue(ValueError):
    """A value read from the store cannot go on a command line: it failed validation."""


@dataclass
class Machine:
    """``machines/<id>/object``: one live agent."""

    id: str
    public_ip: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    data_dir: str = ""
    version: str = ""
    problem: str = ""
    """Why the record is invalid ("" when it is valid): an invalid machine is shown with
    the reason, and never scheduled onto, dialled or put on a command line."""

    @property
    def valid(self) -> bool:
        return not self.problem

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "PublicIP": self.public_ip,
            "Metadata": self.metadata,
            "Hostname": self.hostname,
            "DataDir": self.data_dir,
            "Version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Machine:
        metadata = data.get("Metadata") or {}
        machine = cls(
            id=str(data.get("ID", "")),
            public_ip=str(data.get("PublicIP", "")),
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, dict)
            else {},
            hostname=str(data.get("Hostname", "")),
            data_dir=str(data.get("DataDir", "")),
            version=str(data.get("Version", "")),
        )
        if not isinstance(metadata, dict):
            machine.problem = "Metadata is not a JSON object"
        return machine


@dataclass
class UnitState:
    """``states/<unit>/<machine>``: what an agent reports about one unit it runs.

    The states are systemd's words as the agent wrote them (anyone may write anything
    there), so they stay strings; front ends show them literally.
    """

    load_state: str
    active_state: str
    sub_state: str
    unit_hash: str = ""
    machine_id: str = ""
    machine_state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "loadState": self.load_state,
            "activeState": self.active_state,
            "subState": self.sub_state,
            "unitHash": self.unit_hash,
            "machineState": self.machine_state,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], machine_id: str) -> UnitState:
        return cls(
            load_state=str(data.get("loadState", "")),
            active_state=str(data.get("activeState", "")),
            sub_state=str(data.get("subState", "")),
            unit_hash=str(data.get("unitHash", "")),
            machine_id=machine_id,
            machine_state=dict(data.get("machineState") or {}),
        )


@dataclass
class Job:
    """``job/<unit>/…``: a submitted unit, what it should be, and where the engine put it."""

    name: str
    unit_hash: str = ""
    target_state: str = "inactive"
    """As stored: one of :data:`TargetState` when a client wrote it, but the store may hold
    anything (it is shown literally, and only the known values are acted on)."""
    target: str = ""
    reason: str = ""
    unit: UnitFile | None = None
    problem: str = ""
    """Why the job's name is not a valid unit name ("" when it is): such a job is shown
    as invalid and never becomes a word of a command line."""


@dataclass
class Subnet:
    """``subnets/<subnet>``: who holds it, and when its lease runs out (None: a reservation)."""

    network: ipaddress.IPv4Network
    public_ip: str
    backend: str
    machine_id: str
    lease: int
    expires_at: float | None = None
    """Clock time the lease runs out, from its last reading; None while unread."""
    problem: str = ""
    """Why the record fails validation ("" when it is valid)."""
    vtep_mac: str = ""
    """BackendData.VtepMAC: the vxlan device's MAC on the lease's host."""


@dataclass(frozen=True)
class SubnetRecord:
    """A flannel ``subnets/…`` value, decoded: every field a string, "" when absent."""

    public_ip: str
    backend: str
    machine_id: str
    vtep_mac: str
    problem: str

    @classmethod
    def decode(cls, value: bytes) -> SubnetRecord:
        data = _decode(value)
        record = data if isinstance(data, dict) else {}
        backend_data = record.get("BackendData")
        backend_data = backend_data if isinstance(backend_data, dict) else {}
        return cls(
            public_ip=str(record.get("PublicIP", "")),
            backend=str(record.get("BackendType", "")),
            machine_id=str(backend_data.get("MachineID", "")),
            vtep_mac=str(backend_data.get("VtepMAC", "")),
            problem=subnet_record_problem(record),
        )


def _decode(value: bytes) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class ClusterState:
    """Fleet's keys (and flannel's subnets) as last read or watched, parsed.

    Fleet keys arrive relative to fleet's prefix (``job/x.service/object``); a snapshot
    read and a watch event go through the same :meth:`absorb`, a deletion through
    :meth:`forget`.
    """

    revision: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)
    states: dict[str, dict[str, UnitState]] = field(default_factory=dict)
    raw_units: dict[str, str] = field(default_factory=dict)
    leader: str = ""
    subnets: dict[str, Subnet] = field(default_factory=dict)
    """Flannel's ``subnets/<name>`` records by key name (``10.1.15.0-24``)."""
    machine_leases: dict[str, int] = field(default_factory=dict)
    """Lease ID of each machine's record (its presence)."""

    def absorb(self, rel: str, value: bytes, lease: int = 0) -> None:
        """Fold one fleet key's value in (``rel`` is the key below fleet's prefix)."""
        data = _decode(value)
        parts = rel.split("/")
        if parts[0] == "unit" and len(parts) == 2 and isinstance(data, dict):
            self.raw_units[parts[1]] = str(data.get("Raw", ""))
        elif parts[0] == "job" and len(parts) == 3:
            job = self.jobs.get(parts[1])
            if job is None:
                job = self.jobs[parts[1]] = Job(parts[1], problem=unit_name_problem(parts[1]))
            if parts[2] == "object" and isinstance(data, dict):
                job.unit_hash = str(data.get("UnitHash", ""))
            elif parts[2] == "target-state" and isinstance(data, str):
                job.target_state = data
            elif parts[2] == "target" and isinstance(data, str):
                job.target = data
            elif parts[2] == "reason" and isinstance(data, str):
                job.reason = data
        elif parts[0] == "states" and len(parts) == 3 and isinstance(data, dict):
            self.states.setdefault(parts[1], {})[parts[2]] = UnitState.from_json(data, parts[2])
        elif parts[0] == "machines" and len(parts) == 3:
            if parts[2] == "object" and isinstance(data, dict):
                machine = Machine.from_json(data)
                machine.id = machine.id or parts[1]
                machine.problem = machine.problem or machine_problem(machine, parts[1])
                self.machines[parts[1]] = machine
            self.machine_leases[parts[1]] = lease
        elif rel == "lease/engine-leader" and isinstance(data, str):
            self.leader = data

    def forget(self, rel: str) -> None:
        """A fleet key was deleted: undo what :meth:`absorb` made of it."""
        parts = rel.split("/")
        if parts[0] == "job" and len(parts) == 3:
            job = self.jobs.get(parts[1])
            if job is None:
                return
            if parts[2] == "object":
                del self.jobs[parts[1]]
            elif parts[2] == "target":
                job.target = ""
            elif parts[2] == "target-state":
                job.target_state = "inactive"
            elif parts[2] == "reason":
                job.reason = ""
        elif parts[0] == "states" and len(parts) == 3:
            states = self.states.get(parts[1], {})
            states.pop(parts[2], None)
            if not states:
                self.states.pop(parts[1], None)
        elif parts[0] == "machines" and len(parts) == 3:
            self.machines.pop(parts[1], None)
            self.machine_leases.pop(parts[1], None)
        elif parts[0] == "unit" and len(parts) == 2:
            self.raw_units.pop(parts[1], None)
        elif rel == "lease/engine-leader":
            self.leader = ""

    def absorb_subnet(self, name: str, value: bytes, lease: int) -> None:
        """Fold one flannel ``subnets/<name>`` value in; a name that is no subnet is skipped."""
        network = parse_subnet_key(name.encode())
        if network is None:
            return
        record = SubnetRecord.decode(value)
        old = self.subnets.get(name)
        subnet = Subnet(
            network=network,
            public_ip=record.public_ip,
            backend=record.backend,
            machine_id=record.machine_id,
            lease=lease,
            problem=record.problem,
            vtep_mac=record.vtep_mac,
        )
        if old is not None and old.lease == lease:
            subnet.expires_at = old.expires_at
        self.subnets[name] = subnet

    # Derived views ----------------------------------------------------------------------

    def unit_state(self, name: str) -> CurrentState:
        """The state of unit ``name`` as a whole (:func:`unit_state`); inactive when absent."""
        job = self.jobs.get(name)
        return unit_state(job, self.states.get(name, {})) if job is not None else "inactive"

    def owner(self, record: Subnet | SubnetRecord) -> str:
        """The machine holding a subnet (:func:`subnet_owner`), "" when none is known."""
        return subnet_owner(record, self.machines)


def is_global(job: Job) -> bool:
    """Whether ``job`` runs on every machine that matches it (``[X-Fleet] Global=true``)."""
    return unit_is_global(job.unit, job.name)


def unit_is_global(unit: UnitFile | None, name: str) -> bool:
    """Whether the unit file ``unit`` of unit ``name`` is global; not when it cannot be
    parsed or its [X-Fleet] options are invalid."""
    if unit is None:
        return False
    try:
        return unit.fleet(name).is_global
    except ValueError:
        return False


def copy_state(reported: UnitState | None) -> CurrentState:
    """fleet's state of a unit's copy on one machine, from what its agent reports."""
    if reported is None:
        return "inactive"
    if reported.active_state in ("inactive", "failed"):
        return "loaded"
    return "launched"


def current_state(job: Job, states: dict[str, UnitState]) -> CurrentState:
    """fleet's current state of a job: its copy on its target machine (inactive: not placed,
    or not yet reported). ``states`` is the unit's ``states/<unit>/<machine>`` by machine."""
    return copy_state(states.get(job.target) if job.target else None)


def unit_state(job: Job, states: dict[str, UnitState]) -> CurrentState:
    """The state of a unit as a whole: fleet's :func:`current_state`, or for a global unit
    (which has a copy on every machine and no target) launched once every copy runs,
    inactive while no machine reports one, else loaded."""
    if not is_global(job):
        return current_state(job, states)
    if not states:
        return "inactive"
    if all(copy_state(s) == "launched" for s in states.values()):
        return "launched"
    return "loaded"


def listed_state(job: Job, states: dict[str, UnitState]) -> str:
    """The STATE column of ``list-unit-files``: fleetctl prints ``-`` for a global unit.

    fleet keeps no single current state for a global unit; fleetctl shows ``-`` there,
    and :func:`unit_state` is what the console shows in its place.
    """
    return "-" if is_global(job) else current_state(job, states)


IdEllipsis = Literal["…", "..."]
"""How a shortened machine ID ends: ``…`` in the console, ``...`` in fleetctl's output."""


def short_id(machine_id: str, full: bool = False, ellipsis: IdEllipsis = "…") -> str:
    """A machine ID cut to 8 characters: ``85c0c595…`` (an ID that short is shown whole), or
    fleetctl's ``85c0c595...`` (always the first 8 and the dots)."""
    if full:
        return machine_id
    if ellipsis == "...":
        return f"{machine_id[:8]}..."
    return machine_id if len(machine_id) <= 8 else machine_id[:8] + "…"


def machine_legend(
    machine: Machine | None, machine_id: str, full: bool, ellipsis: IdEllipsis = "..."
) -> str:
    """``85c0c595.../172.17.8.102``: a short machine ID with its public IP (or ``/invalid``)."""
    legend = short_id(machine_id, full, ellipsis)
    if machine is not None and machine.problem:
        legend = f"{legend}/invalid"
    elif machine is not None and machine.public_ip:
        legend = f"{legend}/{machine.public_ip}"
    return legend


def format_metadata(metadata: dict[str, str]) -> str:
    """``disk=ssd,region=us-west`` (sorted), or ``-`` for none."""
    if not metadata:
        return "-"
    return ",".join(f"{key}={value}" for key, value in sorted(metadata.items()))


def fence_note(states: dict[str, UnitState], shown: UnitState | None = None) -> str:
    """ "fenced: lost the store at HH:MM:SS" when a machine stopped the unit for a lost lease.

    ``states`` are the unit's reports by machine; nothing is said while ``shown`` (the report
    a caller displays) has the unit running.
    """
    if shown is not None and shown.active_state in ("active", "activating", "reloading"):
        return ""
    for reported in ([shown] if shown is not None else []) + list(states.values()):
        why = reported.machine_state.get("Fenced")
        if isinstance(why, str) and why:
            return f"fenced: {why}"
    return ""


def placement(job: Job) -> str:
    """Why the unit is where it is: the engine's reason, else what its placement implies."""
    if job.reason:
        return job.reason
    if is_global(job):
        return "global: every machine that matches runs it"
    return "by the engine" if job.target else "not placed yet"


def status_block(job: Job, state: ClusterState) -> list[str]:
    """``clusterctl status``'s header lines for ``job`` (before its journal)."""
    name = job.name
    states = state.states.get(name, {})
    description = job.unit.description(name) if job.unit else ""
    reported = states.get(job.target) if job.target else None
    mark = "●" if reported and reported.active_state == "active" else "○"
    lines = [f"{mark} {name}" + (f" - {description}" if description else "")]
    lines.append(
        f"   Loaded: {reported.load_state if reported else 'not-found'} "
        f"(target state {job.target_state}; hash {job.unit_hash[:7]})"
    )
    if reported:
        lines.append(f"   Active: {reported.active_state} ({reported.sub_state})")
    else:
        lines.append("   Active: inactive (dead)")
    if is_global(job):
        lines.append(f"  Machine: global ({len(states)} machines)")
    elif job.target:
        machine = state.machines.get(job.target)
        lines.append(f"  Machine: {machine_legend(machine, job.target, True)}")
        if machine is not None and machine.problem:
            lines.append(f"  Invalid: {machine.problem}")
    else:
        lines.append("  Machine: -")
    if job.reason:
        lines.append(f"   Reason: {job.reason}")
    note = fence_note(states)
    if note:
        lines.append(f"   {note}")
    return lines


def subnet_owner(record: Subnet | SubnetRecord, machines: dict[str, Machine]) -> str:
    """The machine holding a subnet: the record's MachineID, else the one machine with its
    PublicIP ("" for none, several, or an invalid record)."""
    if record.machine_id:
        return record.machine_id
    if record.problem or not record.public_ip:
        return ""
    owners = [m.id for m in machines.values() if m.public_ip == record.public_ip]
    return owners[0] if len(owners) == 1 else ""


def check_machine(machine: Machine) -> None:
    """Raise :class:`UnsafeValue` unless ``machine`` passes validation (read or built here)."""
    problem = machine.problem or machine_problem(machine)
    if problem:
        raise UnsafeValue(f"Machine {machine.id} is invalid: {problem}")


def ssh_target(machine: Machine) -> str:
    """The address ssh dials for ``machine``: its PublicIP, else its host name.

    Raises :class:`UnsafeValue` for an invalid record: its values never reach ssh.
    """
    check_machine(machine)
    destination = machine.public_ip or machine.hostname
    if not destination:
        raise UnsafeValue(f"Machine {machine.id} has neither a PublicIP nor a Hostname")
    return destination
