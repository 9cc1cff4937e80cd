"""A unit moved away while the store restarts: the agent removes its report once the store is back.

The engine hands a unit to another machine only once no machine reports it running. An
agent that stopped a unit but could not remove its "active" report (the store was
restarting) must try again: otherwise the report, on a lease that lives on, holds the
unit's handoff for good (the chaos soak saw web@3 stay down this way).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Machine, Registry
from clustertui.backend.fleet.runner import reap_orphans
from tests.fleet.conftest import RecordingSink, eventually, start_agent
from tests.fleet.test_fence import beating
from tests.fleet.test_node import launch
from tests.harness import heartbeat
from tests.harness.stores import RunningStore

pytestmark = pytest.mark.slow
TTL = 120
"""Long enough that no lease the agent held can expire during the test: the report can only go
because the agent removed it (an agent may still register anew on a fresh lease when its
watch fails during the restart; the old lease is closed without a revoke and lives on)."""


def restart(store: RunningStore) -> None:
    store.stop()
    started = store.start()  # type: ignore[attr-defined]
    if hasattr(started, "wait_ready"):
        started.wait_ready(30)


async def test_a_report_not_removed_during_a_store_restart_is_removed_after_it(
    fresh_store: RunningStore, tmp_path: Path, sink: RecordingSink
) -> None:
    client = make_client([fresh_store.url])
    check = Registry(make_client([fresh_store.url]), "/stale/fleet/")
    registry = Registry(client, check.prefix)
    machine = Machine("5ta1e0005ta1e0005ta1e0005ta1e000", "127.0.0.1")
    agent, stop, task = start_agent(
        client, registry, machine, tmp_path / "agent", sink, ttl=TTL, reconcile_interval=1.0
    )
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    restarted = asyncio.Event()

    async def reported_here() -> bool:
        try:
            states = (await check.unit_states("svc.service")).get("svc.service", {})
        except Exception:  # the checking client reconnecting after the restart: ask again
            return True
        return machine.id in states

    async def started() -> bool:
        return bool(await beating(beats))

    async def stopped() -> bool:
        return not await beating(beats)

    async def gone() -> bool:
        return not await reported_here()

    try:
        await asyncio.wait_for(agent.registered.wait(), 30)
        await launch(check, "svc.service", heartbeat.unit_text(script, beats))
        target = check.key("job", "svc.service", "target")
        await check.txn([], [check.put_op(target, machine.id)])
        await eventually(started, within=15, what="the unit beating")
        await eventually(reported_here, within=10, what="the unit's report")

        real = registry.remove_state

        async def during_a_restart(name: str, machine_id: str) -> None:
            """The store stops just as the agent removes the report; it is back at once."""
            registry.remove_state = real  # type: ignore[method-assign]
            await asyncio.to_thread(fresh_store.stop)
            try:
                await real(name, machine_id)
            finally:
                await asyncio.to_thread(restart, fresh_store)
                restarted.set()

        registry.remove_state = during_a_restart  # type: ignore[method-assign]
        # The unit moves to another machine: this agent stops it and removes its report.
        await check.txn([], [check.put_op(target, "0" * 32)])
        await eventually(stopped, within=10, what="the unit stopped")
        await asyncio.wait_for(restarted.wait(), 60)
        await eventually(gone, within=10, what="the stale report removed")
        # The path under test: no fence (a fence revokes the lease, and the report with it),
        # and no lease expired (TTL): the agent removed the report itself.
        assert agent.fences == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.close()
        await check.client.close()
        reap_orphans(tmp_path / "agent" / "run", grace=1)
