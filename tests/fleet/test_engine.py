"""Tests for the engine on each store kind: election, reconcile on events, machine loss."""

from __future__ import annotations

import asyncio
import contextlib

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.engine import Engine
from clustertui.backend.fleet.registry import Machine, Registry
from tests.fleet.conftest import eventually

SIMPLE = "[Service]\nExecStart=/bin/true\n"


async def register(kv: EtcdClient, registry: Registry, machine: Machine, ttl: int = 30) -> int:
    lease = await kv.lease(ttl)
    await registry.register_machine(machine, lease.id)
    return lease.id


async def submit(registry: Registry, name: str, raw: str = SIMPLE, state: str = "launched") -> None:
    await registry.create_job(name, raw)
    await registry.set_target_state(name, state)


async def run_engine(engine: Engine) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(engine.run(stop))


async def halt(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def test_the_leader_places_submitted_units_on_the_least_loaded_machines(
    kv: EtcdClient, registry: Registry
) -> None:
    for ident in ("m1aaaaaaaa", "m2bbbbbbbb"):
        await register(kv, registry, Machine(ident, "127.0.0.1"))
    engine = Engine(kv, registry, "m1aaaaaaaa", ttl=2, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:
        for index in range(4):
            await submit(registry, f"u{index}.service")

        async def spread() -> bool:
            jobs = await registry.list_jobs()
            placed = [job.target for job in jobs.values()]
            return sorted(placed) == ["m1aaaaaaaa"] * 2 + ["m2bbbbbbbb"] * 2

        # The reconcile interval is long: placement must come from the watch.
        await eventually(spread, what="units spread over both machines")
        assert (await registry.snapshot(("lease",))).leader == "m1aaaaaaaa"
    finally:
        await halt(stop, task)


async def test_an_unplaceable_unit_keeps_the_reason_in_the_store(
    kv: EtcdClient, registry: Registry
) -> None:
    await register(kv, registry, Machine("m1aaaaaaaa", metadata={"region": "us-east"}))
    engine = Engine(kv, registry, "m1aaaaaaaa", ttl=2, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:
        await submit(registry, "far.service", SIMPLE + "[X-Fleet]\nMachineMetadata=region=eu\n")

        async def explained() -> bool:
            job = await registry.job("far.service")
            return job is not None and job.reason == "no machine has the metadata region=eu"

        await eventually(explained, what="the reason")
        job = await registry.job("far.service")
        assert job is not None and job.target == ""
    finally:
        await halt(stop, task)


async def test_units_of_a_machine_whose_lease_expires_move_to_another(
    kv: EtcdClient, registry: Registry
) -> None:
    doomed = await register(kv, registry, Machine("m1aaaaaaaa"))
    await register(kv, registry, Machine("m2bbbbbbbb"))
    engine = Engine(kv, registry, "m2bbbbbbbb", ttl=2, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:
        await submit(registry, "a.service")
        await submit(registry, "b.service")

        async def targets_are(*expected: str) -> bool:
            jobs = await registry.list_jobs()
            return {job.target for job in jobs.values()} == set(expected)

        await eventually(lambda: targets_are("m1aaaaaaaa", "m2bbbbbbbb"), what="spread")
        await kv.revoke_lease(doomed)
        await eventually(lambda: targets_are("m2bbbbbbbb"), what="rescheduling")
    finally:
        await halt(stop, task)


async def test_only_one_engine_leads_and_another_takes_over_when_it_stops(
    kv: EtcdClient, registry: Registry
) -> None:
    first = Engine(kv, registry, "e1aaaaaaaa", ttl=1, reconcile_interval=30)
    second = Engine(kv, registry, "e2bbbbbbbb", ttl=1, reconcile_interval=30)
    stop1, task1 = await run_engine(first)
    await eventually(lambda: first.is_leader, what="the first engine to lead")
    stop2, task2 = await run_engine(second)
    try:
        await asyncio.sleep(1.5)
        assert first.is_leader and not second.is_leader
        await halt(stop1, task1)
        await eventually(lambda: second.is_leader, within=5, what="the second engine to lead")
        assert (await registry.snapshot(("lease",))).leader == "e2bbbbbbbb"
    finally:
        await halt(stop1, task1)
        await halt(stop2, task2)


async def test_a_follower_does_not_write(kv: EtcdClient, registry: Registry) -> None:
    await register(kv, registry, Machine("m1aaaaaaaa"))
    lease = await kv.lease(30)
    await kv.put(registry.leader_key, b'"someone-else"', lease=lease)
    engine = Engine(kv, registry, "m1aaaaaaaa", ttl=1, reconcile_interval=0.1)
    stop, task = await run_engine(engine)
    try:
        await submit(registry, "x.service")
        await asyncio.sleep(1.0)
        job = await registry.job("x.service")
        assert job is not None and job.target == ""
        assert not engine.is_leader
    finally:
        await halt(stop, task)
        await kv.revoke_lease(lease.id)


async def test_constraints_combine_through_the_store(kv: EtcdClient, registry: Registry) -> None:
    await register(kv, registry, Machine("aaaaaaaa01", metadata={"disk": "ssd"}))
    await register(kv, registry, Machine("bbbbbbbb02", metadata={"disk": "ssd"}))
    await register(kv, registry, Machine("cccccccc03", metadata={"disk": "hdd"}))
    engine = Engine(kv, registry, "aaaaaaaa01", ttl=2, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:
        ssd = "[X-Fleet]\nMachineMetadata=disk=ssd\nConflicts=db@*\n"
        await submit(registry, "db@1.service", SIMPLE + ssd)
        await submit(registry, "db@2.service", SIMPLE + ssd)
        await submit(registry, "db@3.service", SIMPLE + ssd)
        await submit(registry, "backup.service", SIMPLE + "[X-Fleet]\nMachineOf=db@2.service\n")
        await submit(registry, "pinned.service", SIMPLE + "[X-Fleet]\nMachineID=cccccccc\n")

        async def settled() -> bool:
            jobs = await registry.list_jobs()
            return len(jobs) == 5 and all(j.target or j.reason for j in jobs.values())

        await eventually(settled, what="every unit placed or explained")
        jobs = await registry.list_jobs()
        assert {jobs["db@1.service"].target, jobs["db@2.service"].target} == {
            "aaaaaaaa01",
            "bbbbbbbb02",
        }
        assert jobs["db@3.service"].target == ""
        assert "conflicting unit" in jobs["db@3.service"].reason
        assert jobs["backup.service"].target == jobs["db@2.service"].target
        assert jobs["pinned.service"].target == "cccccccc03"
    finally:
        await halt(stop, task)


async def test_a_restarted_engine_retakes_its_own_leadership_at_once(
    kv: EtcdClient, registry: Registry
) -> None:
    stale = await kv.lease(60)
    await kv.put(registry.leader_key, b'"e1aaaaaaaa"', lease=stale)
    engine = Engine(kv, registry, "e1aaaaaaaa", ttl=30, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:
        await asyncio.wait_for(engine.elected.wait(), 5)
        info = await kv.get_lease_info(stale.id, keys=False)
        assert info.TTL == -1
    finally:
        await halt(stop, task)
