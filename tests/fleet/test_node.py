"""Tests with real `clusterd node` processes: failover, leader loss, shutdown, restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry, current_state
from clustertui.backend.fleet.runner import process_start_time, reap_orphans
from clustertui.backend.fleet.unitfile import unit_hash
from tests.fleet.conftest import NodeFactory, eventually
from tests.harness.etcd import EtcdMember
from tests.harness.procs import Child
from tests.harness.stores import RunningStore

LOOP = '[Service]\nExecStart=/bin/sh -c "while true; do echo tick; sleep 0.2; done"\n'


def ident(child: Child, root: Path) -> str:
    path = root / child.name / "machine-id"
    child.wait_until(path.exists, timeout=20)
    return path.read_text().strip()


async def launch(registry: Registry, name: str, raw: str = LOOP) -> None:
    await registry.create_job(name, raw)
    await registry.set_target_state(name, "launched")


async def running_on(registry: Registry, name: str) -> str:
    """The machine that reports ``name`` active, or ''."""
    job = await registry.job(name)
    if job is None:
        return ""
    states = (await registry.unit_states(name)).get(name, {})
    if current_state(job, states) == "launched" and states[job.target].active_state == "active":
        return job.target
    return ""


async def runs_on(registry: Registry, name: str, machine: str) -> bool:
    return await running_on(registry, name) == machine


def unit_pid(data_dir: Path, name: str) -> int:
    record = data_dir / "run" / f"{name}.json"
    return int(json.loads(record.read_text())["pid"]) if record.exists() else 0


async def test_units_of_a_killed_node_run_elsewhere_within_the_agent_ttl(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    children = [nodes.start(f"n{i}", ttl="1s") for i in range(3)]
    ids = {ident(child, tmp_path): child for child in children}
    await eventually(lambda: _machines_are(registry, set(ids)), what="three machines")
    names = [f"svc{i}.service" for i in range(3)]
    for name in names:
        await launch(registry, name)

    async def all_running() -> bool:
        return all([await running_on(registry, n) for n in names])

    await eventually(all_running, within=20, what="three units running")
    victim_id = await running_on(registry, "svc0.service")
    victim = ids[victim_id]
    moved = [n for n in names if await running_on(registry, n) == victim_id]
    victim.kill()
    killed_at = time.monotonic()
    try:

        async def moved_away() -> bool:
            hosts = [await running_on(registry, n) for n in moved]
            return all(h and h != victim_id for h in hosts)

        await eventually(moved_away, within=10, what="units relaunched elsewhere")
        # agent-ttl is 1 s; the issue allows agent-ttl + 2 s.
        assert time.monotonic() - killed_at < 3.0
    finally:
        reap_orphans(tmp_path / victim.name / "run", grace=1)


async def _machines_are(registry: Registry, expected: set[str]) -> bool:
    return set(await registry.machines()) == expected


async def test_a_new_engine_leads_after_the_leader_is_killed(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    children = [nodes.start(f"n{i}", ttl="1s") for i in range(2)]
    ids = {ident(child, tmp_path): child for child in children}

    async def leader() -> str:
        return (await registry.snapshot(("lease",))).leader

    async def elected() -> bool:
        return bool(await leader())

    await eventually(elected, what="a leader")
    old = await leader()
    ids[old].kill()
    killed_at = time.monotonic()

    async def new_leader() -> bool:
        current = await leader()
        return bool(current) and current != old

    await eventually(new_leader, within=10, what="a new leader")
    assert time.monotonic() - killed_at < 3.0
    # The new leader schedules: a unit submitted now runs on the surviving machine.
    await launch(registry, "after.service")
    survivor = next(i for i in ids if i != old)
    await eventually(lambda: runs_on(registry, "after.service", survivor), within=10)
    ids[survivor].stop()


async def test_sigterm_stops_the_units_and_removes_the_machine(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    child = nodes.start("solo", ttl="5s")
    machine = ident(child, tmp_path)
    await launch(registry, "svc.service")
    await eventually(lambda: runs_on(registry, "svc.service", machine), within=15)
    pid = unit_pid(tmp_path / "solo", "svc.service")
    assert pid and process_start_time(pid)
    child.stop(signal.SIGTERM, timeout=15)
    assert child.process is not None and child.process.returncode == 0
    assert not process_start_time(pid)
    assert await registry.machines() == {}
    assert await registry.unit_states("svc.service") == {}


async def test_a_restarted_node_stops_orphans_and_takes_up_its_units_again(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    machine = "feedfacefeedfacefeedfacefeedface"
    first = nodes.start("phoenix", ttl="2s", machine_id=machine)
    await launch(registry, "svc.service")
    await eventually(lambda: runs_on(registry, "svc.service", machine), within=15)
    old_pid = unit_pid(tmp_path / "phoenix", "svc.service")
    first.kill()
    assert process_start_time(old_pid), "the unit outlives a SIGKILLed agent"
    second = nodes.start("phoenix", ttl="2s", machine_id=machine)
    second.wait_until(lambda: not process_start_time(old_pid), timeout=15)

    async def relaunched() -> bool:
        pid = unit_pid(tmp_path / "phoenix", "svc.service")
        return pid not in (0, old_pid) and await running_on(registry, "svc.service") == machine

    await eventually(relaunched, within=15, what="the unit running again")


async def test_a_global_unit_runs_on_every_matching_machine(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    east = [nodes.start(f"east{i}", "--metadata", "region=us-east") for i in range(2)]
    west = nodes.start("west", "--metadata", "region=us-west")
    east_ids = {ident(child, tmp_path) for child in east}
    ident(west, tmp_path)
    await launch(
        registry,
        "monitor.service",
        LOOP + "[X-Fleet]\nGlobal=true\nMachineMetadata=region=us-east\n",
    )

    async def everywhere_east() -> bool:
        states = (await registry.unit_states("monitor.service")).get("monitor.service", {})
        active = {m for m, s in states.items() if s.active_state == "active"}
        return active == east_ids

    await eventually(everywhere_east, within=15, what="the global unit on both east machines")


async def test_replacing_a_running_unit_restarts_it_with_the_new_text(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    registry = Registry(registry.client, nodes.prefix)
    child = nodes.start("solo")
    machine = ident(child, tmp_path)
    marker = tmp_path / "version"
    first = f'[Service]\nExecStart=/bin/sh -c "echo one > {marker}; exec sleep 60"\n'
    second = first.replace("one", "two")
    await launch(registry, "svc.service", first)
    await eventually(lambda: marker.exists() and marker.read_text() == "one\n", within=15)
    old_pid = unit_pid(tmp_path / "solo", "svc.service")
    await registry.create_job("svc.service", second, replace=True)

    async def second_running() -> bool:
        states = (await registry.unit_states("svc.service")).get("svc.service", {})
        state = states.get(machine)
        return (
            state is not None
            and state.unit_hash == unit_hash(second)
            and (state.active_state == "active")
        )

    await eventually(second_running, within=15, what="the new text running")
    assert marker.read_text() == "two\n"
    assert not process_start_time(old_pid)


def restart_store(store: RunningStore) -> None:
    if isinstance(store, EtcdMember):
        store.stop()
        store.start().wait_ready()
    else:
        store.restart()  # type: ignore[attr-defined]


async def test_units_keep_running_through_a_store_restart_and_the_node_comes_back(
    fresh_store: RunningStore, tmp_path: Path
) -> None:
    prefix = "/outage/fleet/"
    factory = NodeFactory(fresh_store.url, prefix, tmp_path)
    client = make_client([fresh_store.url])
    registry = Registry(client, prefix)
    try:
        machine = ident(factory.start("n1", ttl="2s"), tmp_path)
        await launch(registry, "svc.service")
        await eventually(lambda: runs_on(registry, "svc.service", machine), within=15)
        pid = unit_pid(tmp_path / "n1", "svc.service")
        await client.close()
        await asyncio.to_thread(restart_store, fresh_store)
        client = make_client([fresh_store.url])
        registry = Registry(client, prefix)
        await eventually(lambda: runs_on(registry, "svc.service", machine), within=20)
        assert unit_pid(tmp_path / "n1", "svc.service") == pid
        assert process_start_time(pid)
        assert machine in await registry.machines()
    finally:
        factory.stop_all()
        await client.close()
