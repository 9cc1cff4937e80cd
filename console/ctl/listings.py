"""Provides clusterctl's listings: list-machines, list-units, list-unit-files, list-subnets."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from clustertui.backend.etcd import EtcdError
from clustertui.backend.fleet.model import (
    Machine,
    SubnetRecord,
    UnitState,
    format_metadata,
    is_global,
    listed_state,
    machine_legend,
    short_id,
    subnet_owner,
)
from clustertui.backend.keys import prefix_end
from clustertui.console.ctl.args import fields as _fields
from clustertui.console.ctl.session import Session


async def list_machines(ctl: Session) -> int:
    fields = _fields(
        ctl.args.fields, "machine,ip,metadata", ("machine", "ip", "metadata", "hostname")
    )
    machines = await ctl.machines()
    getters: dict[str, Callable[[Machine], str]] = {
        "machine": lambda m: short_id(m.id, ctl.args.full, "..."),
        "ip": lambda m: f"invalid: {m.problem}" if m.problem else (m.public_ip or "-"),
        "metadata": lambda m: format_metadata(m.metadata),
        "hostname": lambda m: m.hostname or "-",
    }
    rows = [[getters[f](m) for f in fields] for _, m in sorted(machines.items())]
    ctl.table(fields, rows)
    return 0


async def list_units(ctl: Session) -> int:
    fields = _fields(
        ctl.args.fields,
        "unit,machine,active,sub",
        ("unit", "machine", "active", "sub", "load", "hash"),
    )
    states = await ctl.registry.unit_states()
    machines = await ctl.machines()
    full = ctl.args.full
    getters: dict[str, Callable[[UnitState, str], str]] = {
        "unit": lambda s, name: name,
        "machine": lambda s, name: machine_legend(machines.get(s.machine_id), s.machine_id, full),
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
    ctl.table(fields, rows)
    return 0


async def list_unit_files(ctl: Session) -> int:
    fields = _fields(
        ctl.args.fields,
        "unit,hash,dstate,state,target",
        ("unit", "hash", "dstate", "state", "target", "global", "desc"),
    )
    state = await ctl.registry.snapshot(("job", "unit", "machines", "states"))
    full = ctl.args.full
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
    ctl.table(fields, rows)
    return 0


async def list_subnets(ctl: Session) -> int:
    fields = ["subnet", "machine", "public-ip", "backend", "expires"]
    if ctl.args.full:
        fields.append("vtep-mac")
    base = (ctl.args.overlay_prefix.rstrip("/") + "/subnets/").encode()
    await ctl.client.connect()
    response = await ctl.registry.read_range(base, prefix_end(base))
    machines = await ctl.machines()
    rows = []
    for kv in response.kvs:
        subnet = kv.key.decode(errors="replace")[len(base) :].replace("-", "/")
        record = SubnetRecord.decode(kv.value)
        public_ip = f"invalid: {record.problem}" if record.problem else record.public_ip or "-"
        owner = subnet_owner(record, machines)
        machine = short_id(owner, ctl.args.full, "...") if owner else "-"
        backend = record.backend or "-"
        expires = await _expiry(ctl, kv.lease)
        rows.append([subnet, machine, public_ip, backend, expires])
        if ctl.args.full:
            rows[-1].append(record.vtep_mac or "-")
    ctl.table(fields, rows)
    return 0


async def _expiry(ctl: Session, lease: int) -> str:
    if not lease:
        return "reserved"
    try:
        info = await ctl.client.get_lease_info(lease, keys=False)
    except EtcdError:
        return "-"
    if info.TTL <= 0:
        return "expired"
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=info.TTL)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
