"""Tests of fleet's model: one ClusterState for every front end, and the views derived from it.

The same store state must give the same view through `clusterctl` and through the console's
panes (they read one rule each, from backend.fleet.model), and a state kept by watch events
must equal a fresh snapshot read of the same keys.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.model import (
    ClusterState,
    Job,
    Machine,
    Subnet,
    SubnetRecord,
    UnitState,
    listed_state,
    machine_legend,
    subnet_owner,
    unit_state,
)
from clustertui.backend.fleet.registry import Registry
from clustertui.backend.fleet.unitfile import parse, unit_hash
from clustertui.console.access import MachineAccess
from clustertui.console.cluster import ClusterFeed, ClusterModel
from clustertui.console.ctl import apply_environment, build_parser, execute
from clustertui.console.screens.units import UnitsPane
from tests.fleet.conftest import eventually
from tests.harness.stores import RunningStore

M1 = "85c0c5950123456789abcdef01234567"
M2 = "113f16a7fedcba9876543210fedcba98"
HELLO = "[Unit]\nDescription=Hello\n[Service]\nExecStart=/bin/sleep 60\n"
GLOBAL = (
    "[Unit]\nDescription=Everywhere\n[Service]\nExecStart=/bin/sleep 60\n[X-Fleet]\nGlobal=true\n"
)


async def seed(registry: Registry, network: str) -> None:
    """Two machines; a placed unit, an idle one, a global unit running on one machine and
    failed on the other; a subnet held by each machine and one whose record is not JSON."""
    await registry.register_machine(Machine(M1, "172.17.8.102", {"disk": "ssd"}, "core-2"), 0)
    await registry.register_machine(Machine(M2, "172.17.8.103", {}, "core-3"), 0)
    await registry.create_job("hello.service", HELLO)
    await registry.set_target_state("hello.service", "launched")
    await registry.txn([], [registry.put_op(registry.key("job", "hello.service", "target"), M1)])
    hello = UnitState("loaded", "active", "running", unit_hash(HELLO), M1)
    await registry.publish_state("hello.service", hello, 0)
    await registry.create_job("idle.service", HELLO.replace("Hello", "Idle"))
    await registry.create_job("monitor.service", GLOBAL)
    await registry.set_target_state("monitor.service", "launched")
    running = UnitState("loaded", "active", "running", unit_hash(GLOBAL), M1)
    failed = UnitState("loaded", "failed", "failed", unit_hash(GLOBAL), M2)
    await registry.publish_state("monitor.service", running, 0)
    await registry.publish_state("monitor.service", failed, 0)
    client = registry.client
    await client.put(f"{network}config".encode(), json.dumps({"Network": "10.1.0.0/16"}).encode())
    for subnet, ip in (("10.1.15.0-24", "172.17.8.102"), ("10.1.16.0-24", "172.17.8.103")):
        record = {"PublicIP": ip, "BackendType": "vxlan"}
        await client.put(f"{network}subnets/{subnet}".encode(), json.dumps(record).encode())
    await client.put(f"{network}subnets/10.1.99.0-24".encode(), b"not json")


async def clusterctl(store: RunningStore, prefix: str, network: str, *argv: str) -> list[list[str]]:
    base = ["--endpoint", store.url, "--key-prefix", prefix, "--overlay-prefix", network]
    args = build_parser().parse_args([*base, "--request-timeout", "5", *argv])
    apply_environment(args, {})
    out, err = io.StringIO(), io.StringIO()
    assert await execute(args, out, err) == 0, err.getvalue()
    return [[c for c in line.split("\t") if c] for line in out.getvalue().splitlines()]


async def console_model(kv: EtcdClient, prefix: str, network: str) -> ClusterModel:
    model = ClusterModel(prefix=prefix, network_prefix=network)
    await ClusterFeed(kv, model).load()
    return model


def pane_rows(model: ClusterModel) -> list[tuple[str, ...]]:
    pane = UnitsPane(model, None, MachineAccess())
    return [tuple(str(c) for c in row.cells) for row in pane.build_rows()]


@pytest.fixture
def prefixes(ns: bytes) -> tuple[str, str]:
    return ns.decode() + "fleet/", ns.decode() + "network/"


async def test_clusterctl_and_the_units_pane_show_one_view_of_global_and_other_units(
    store: RunningStore, kv: EtcdClient, prefixes: tuple[str, str]
) -> None:
    prefix, network = prefixes
    await seed(Registry(kv, prefix), network)
    files = await clusterctl(
        store, prefix, network, "list-unit-files", "--no-legend", "--fields",
        "unit,dstate,state,global",
    )  # fmt: skip
    units = await clusterctl(store, prefix, network, "list-units", "--no-legend", "-l")
    model = await console_model(kv, prefix, network)
    rows = pane_rows(model)

    # fleetctl's columns: no single state for a global unit.
    assert files == [
        ["hello.service", "launched", "launched", "false"],
        ["idle.service", "inactive", "inactive", "false"],
        ["monitor.service", "launched", "-", "true"],
    ]
    # The pane: one row per unit, a global unit one row per machine that reports it.
    by_unit: dict[str, list[tuple[str, ...]]] = {}
    for row in rows:
        by_unit.setdefault(row[0], []).append(row)
    for name, dstate, state, is_global in files:
        shown = by_unit[name]
        assert {row[2] for row in shown} == {dstate}
        assert (len(shown) > 1) == (is_global == "true")
        if is_global == "false":
            assert [row[3] for row in shown] == [state]
    # The global unit's state is the model's rule, the same on every row of it: one copy
    # failed, so it is loaded, not launched.
    monitor = model.fleet.jobs["monitor.service"]
    assert unit_state(monitor, model.fleet.states["monitor.service"]) == "loaded"
    assert {row[3] for row in by_unit["monitor.service"]} == {"loaded"}
    assert listed_state(monitor, model.fleet.states["monitor.service"]) == "-"
    # list-units and the pane's rows agree copy by copy (machine, active, sub); the pane
    # shortens IDs with an ellipsis of its own, the full ID is fleetctl's -l.
    reported = sorted((r[0], r[1].split("/")[0], r[2], r[3]) for r in units)
    shown_rows = sorted(
        (r[0], next(m for m in (M1, M2) if m.startswith(r[1][:8])), r[4], r[5])
        for r in rows
        if r[4] != "-"
    )
    assert reported == shown_rows
    assert ("monitor.service", M2, "failed", "failed") in reported


async def test_a_subnet_record_that_is_not_json_is_invalid_in_clusterctl_as_in_the_pane(
    store: RunningStore, kv: EtcdClient, prefixes: tuple[str, str]
) -> None:
    prefix, network = prefixes
    await seed(Registry(kv, prefix), network)
    rows = await clusterctl(store, prefix, network, "list-subnets", "--no-legend")
    model = await console_model(kv, prefix, network)
    listed = {row[0]: row[1:3] for row in rows}
    assert listed["10.1.15.0/24"] == ["85c0c595...", "172.17.8.102"]
    assert listed["10.1.16.0/24"] == ["113f16a7...", "172.17.8.103"]
    # Before the model, clusterctl listed this record as valid, with no IP ("-").
    problem = model.subnets["10.1.99.0-24"].problem
    assert problem
    assert listed["10.1.99.0/24"] == ["-", f"invalid: {problem}"]
    for name, subnet in model.subnets.items():
        owner = model.machine_of_subnet(subnet)
        assert (owner[:8] + "..." if owner else "-") == listed[name.replace("-", "/")][0]


def facts(state: ClusterState) -> dict[str, Any]:
    """What a front end reads of a state, in plain values."""
    return {
        "jobs": {
            n: (j.unit_hash, j.target_state, j.target, j.reason, j.unit is not None)
            for n, j in state.jobs.items()
            if j.unit_hash
        },
        "machines": {i: (m.public_ip, m.metadata, m.problem) for i, m in state.machines.items()},
        "states": {n: {m: s.to_json() for m, s in by.items()} for n, by in state.states.items()},
        "leader": state.leader,
        "views": {n: unit_state(j, state.states.get(n, {})) for n, j in state.jobs.items()},
    }


async def test_watch_events_keep_the_state_a_fresh_snapshot_reads(
    kv: EtcdClient, prefixes: tuple[str, str]
) -> None:
    prefix, network = prefixes
    registry = Registry(kv, prefix)
    await seed(registry, network)
    model = ClusterModel(prefix=prefix, network_prefix=network)
    feed = ClusterFeed(kv, model)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(model.loaded.wait(), 10)
        # Changes of every kind: a new job, a target moved, a state gone, a machine gone,
        # a unit destroyed, a leader elected.
        await registry.create_job("new.service", HELLO.replace("Hello", "New"))
        await registry.set_target_state("new.service", "loaded")
        await registry.txn(
            [], [registry.put_op(registry.key("job", "hello.service", "target"), M2)]
        )
        await registry.remove_state("monitor.service", M2)
        await registry.txn([], [registry.delete_op(registry.key("machines", M2, "object"))])
        await registry.destroy("idle.service")
        await registry.txn([], [registry.put_op(registry.leader_key, M1)])
        expected = await registry.snapshot()
        await eventually(lambda: model.revision >= expected.revision, what="the watch")
        feed.drain()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert facts(model.fleet) == facts(expected)
    assert "idle.service" not in model.fleet.jobs and M2 not in model.fleet.machines
    assert model.fleet.leader == M1


def test_a_global_unit_is_launched_once_every_copy_runs() -> None:
    job = Job("g.service", "h", "launched", unit=parse(GLOBAL))
    running = UnitState("loaded", "active", "running", machine_id=M1)
    stopped = UnitState("loaded", "inactive", "dead", machine_id=M2)
    assert unit_state(job, {}) == "inactive"
    assert unit_state(job, {M1: running}) == "launched"
    assert unit_state(job, {M1: running, M2: stopped}) == "loaded"
    assert listed_state(job, {M1: running}) == "-"
    placed = Job("p.service", "h", "launched", target=M1, unit=parse(HELLO))
    assert unit_state(placed, {M1: running}) == listed_state(placed, {M1: running}) == "launched"
    assert unit_state(placed, {M2: running}) == "inactive"


def test_machine_labels_and_subnet_owners() -> None:
    good = Machine(M1, "10.0.0.1")
    bad = Machine(M2, "-oProxyCommand=x", problem="PublicIP is not an IP address")
    assert machine_legend(good, M1, False) == "85c0c595.../10.0.0.1"
    assert machine_legend(good, M1, False, ellipsis="…") == "85c0c595…/10.0.0.1"
    assert machine_legend(bad, M2, True) == f"{M2}/invalid"
    assert machine_legend(None, M2, False) == "113f16a7..."
    machines = {M1: good, M2: bad}
    record = SubnetRecord.decode(json.dumps({"PublicIP": "10.0.0.1"}).encode())
    assert subnet_owner(record, machines) == M1
    garbage = SubnetRecord.decode(b"\xff not json")
    assert garbage.problem and subnet_owner(garbage, machines) == ""
    state = ClusterState(machines=machines)
    state.absorb_subnet("10.1.2.0-24", json.dumps({"PublicIP": "10.0.0.1"}).encode(), 7)
    state.absorb_subnet("not-a-subnet", b"{}", 0)
    assert list(state.subnets) == ["10.1.2.0-24"]
    subnet = state.subnets["10.1.2.0-24"]
    assert isinstance(subnet, Subnet) and state.owner(subnet) == M1 and subnet.lease == 7
