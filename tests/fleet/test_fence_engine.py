"""The engine's side of fencing, on each store kind: a unit moves only once it stopped."""

from __future__ import annotations

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet import engine as engine_module
from clustertui.backend.fleet.engine import Engine
from clustertui.backend.fleet.registry import Machine, Registry, UnitState
from tests.fleet.conftest import eventually
from tests.fleet.test_engine import halt, register, run_engine, submit

PINNED = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=role=b\n"


def active_on(machine: str) -> UnitState:
    return UnitState("loaded", "active", "running", machine_id=machine)


async def test_a_unit_moves_only_after_its_old_machine_stops_it(
    kv: EtcdClient, registry: Registry
) -> None:
    # The unit runs on "a"; its new text wants a machine with role=b.
    lease_a = await register(kv, registry, Machine("aaaaaaaaaa", "127.0.0.1"))
    await register(kv, registry, Machine("bbbbbbbbbb", "127.0.0.1", metadata={"role": "b"}))
    await submit(registry, "svc.service", PINNED)
    await registry.txn(
        [], [registry.put_op(registry.key("job", "svc.service", "target"), "aaaaaaaaaa")]
    )
    await registry.publish_state("svc.service", active_on("aaaaaaaaaa"), lease_a)
    engine = Engine(kv, registry, "bbbbbbbbbb", ttl=2, reconcile_interval=30)
    stop, task = await run_engine(engine)
    try:

        async def target() -> str:
            job = await registry.job("svc.service")
            assert job is not None
            return job.target

        async def unplaced() -> bool:
            job = await registry.job("svc.service")
            return job is not None and not job.target and "waiting for machine" in job.reason

        # First taken off "a" (whose agent then stops it), not yet given to "b".
        await eventually(unplaced, what="the unit held while a runs it")
        assert await target() == ""
        # "a" reports it stopped (or its lease ends): now "b" gets it, from the states watch.
        await registry.remove_state("svc.service", "aaaaaaaaaa")

        async def on_b() -> bool:
            return await target() == "bbbbbbbbbb"

        await eventually(on_b, what="the unit on b")
    finally:
        await halt(stop, task)


async def test_a_move_written_on_a_stale_read_of_a_returning_machine_is_refused(
    kv: EtcdClient, registry: Registry
) -> None:
    await register(kv, registry, Machine("bbbbbbbbbb", "127.0.0.1"))
    await submit(registry, "svc.service")
    await registry.txn(
        [], [registry.put_op(registry.key("job", "svc.service", "target"), "aaaaaaaaaa")]
    )
    stale = await registry.snapshot(("job", "unit", "machines"))
    schedule, machine_guards = engine_module.schedule, engine_module.machine_guards
    decisions = schedule(stale)
    assert decisions["svc.service"].target == "bbbbbbbbbb"
    guards = machine_guards(stale, decisions, registry)
    assert len(guards) == 1
    move = registry.put_op(registry.key("job", "svc.service", "target"), "bbbbbbbbbb")
    # Machine "a" (fenced, now back) registers anew after the engine's read.
    await register(kv, registry, Machine("aaaaaaaaaa", "127.0.0.1"))
    assert not (await registry.txn(guards, [move])).succeeded
    fresh = await registry.snapshot(("job", "unit", "machines"))
    assert schedule(fresh)["svc.service"].target == "aaaaaaaaaa"
    # Without a return the same write goes through.
    fresh_guards = machine_guards(fresh, {"svc.service": decisions["svc.service"]}, registry)
    assert (await registry.txn(fresh_guards, [move])).succeeded
