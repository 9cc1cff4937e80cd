"""A node cut off from the store stops its units before its lease can expire: never two copies.

Real `clusterd node` processes, a real store (etcd and the bundled one), a TCP proxy in
front of one node's endpoint, and units that beat their PID and the time every 100 ms into
a file: two PIDs beating at once is a unit running twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdError, make_client
from clustertui.backend.fleet.registry import Machine, Registry
from clustertui.backend.fleet.runner import process_start_time, reap_orphans
from tests.ctl.conftest import CtlRunner
from tests.fleet.conftest import NodeFactory, RecordingSink, eventually, start_agent
from tests.fleet.test_node import _machines_are, ident, launch, running_on
from tests.harness import heartbeat
from tests.harness.procs import REPO
from tests.harness.proxy import TcpProxy

pytestmark = pytest.mark.slow
TTL = 2.0


def journal(data_dir: Path, unit: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clustertui.backend.daemon",
            "journal",
            "--data-dir",
            str(data_dir),
            "-u",
            unit,
            "-o",
            "cat",
            "--no-pager",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    return result.stdout


async def beating(beats: Path, pid_not: int = 0, within: float = 0.5) -> int:
    """The PID that beat within the last ``within`` seconds (other than ``pid_not``), or 0."""
    now = time.time()
    for span in reversed(heartbeat.spans(beats)):
        if span.pid != pid_not and now - span.last < within:
            return span.pid
    return 0


@pytest.mark.parametrize("how", ["silence", "refused"])
async def test_a_partitioned_node_stops_its_unit_before_it_runs_elsewhere(
    nodes: NodeFactory, registry: Registry, tmp_path: Path, store: object, how: str
) -> None:
    """Cut silently (packets dropped) or loudly (connections refused: every call fails)."""
    registry = Registry(registry.client, nodes.prefix)
    proxy = TcpProxy.to_url(store.url)  # type: ignore[attr-defined]
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    try:
        cut_off = nodes.start("cut", "--endpoints", proxy.url, ttl=f"{TTL:g}s")
        cut_id = ident(cut_off, tmp_path)
        await eventually(lambda: _machines_are(registry, {cut_id}), what="the first machine")
        await launch(registry, "svc.service", heartbeat.unit_text(script, beats))
        await eventually(lambda: beating(beats), within=15, what="the unit beating")
        first_pid = await beating(beats)
        other = nodes.start("other", ttl=f"{TTL:g}s")
        other_id = ident(other, tmp_path)
        await eventually(lambda: _machines_are(registry, {cut_id, other_id}), what="two machines")
        assert await running_on(registry, "svc.service") == cut_id

        proxy.cut() if how == "silence" else proxy.refuse()
        cut_at = time.time()
        # The other machine takes the unit once the cut one's lease has expired.
        await eventually(
            lambda: beating(beats, pid_not=first_pid), within=TTL + 8, what="a second copy"
        )
        moved_after = time.time() - cut_at
        await asyncio.sleep(max(0.0, 3 * TTL - (time.time() - cut_at)))
        assert not process_start_time(first_pid), "the cut-off copy is still running"
        proxy.heal()

        # Back in touch, the node registers anew and does not take the unit back.
        await eventually(
            lambda: _machines_are(registry, {cut_id, other_id}), within=15, what="re-registered"
        )
        await eventually(lambda: running_on(registry, "svc.service"), within=10)
        assert await running_on(registry, "svc.service") == other_id
        await asyncio.sleep(1.0)

        found = heartbeat.spans(beats)
        assert len(found) >= 2, found
        both = heartbeat.overlaps(found)
        assert not both, f"two copies ran at once: {both}"
        stopped = next(s for s in found if s.pid == first_pid)
        # Stopped before the lease could run out (the lease was renewed at most TTL ago).
        assert stopped.last - cut_at < TTL, (stopped.last - cut_at, TTL)
        assert moved_after < TTL + 5
        text = journal(tmp_path / "cut", "svc.service")
        assert "fenced: lost the store at" in text, text
        # clusterctl status says where the unit was fenced, and when it lost the store.
        status = await CtlRunner(store.url, nodes.prefix)("status", "svc")  # type: ignore[attr-defined]
        assert "   Active: active (running)" in status.out, status.out
        assert "   fenced: lost the store at " in status.out, status.out
    finally:
        proxy.stop()
        for name in ("cut", "other"):
            reap_orphans(tmp_path / name / "run", grace=1)


async def test_a_node_frozen_past_its_ttl_kills_its_unit_on_resuming(
    nodes: NodeFactory, registry: Registry, tmp_path: Path, store: object
) -> None:
    """Resumed, the node checks its lease before anything else, even with the store away."""
    registry = Registry(registry.client, nodes.prefix)
    proxy = TcpProxy.to_url(store.url)  # type: ignore[attr-defined]
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    frozen = nodes.start("frozen", "--endpoints", proxy.url, ttl=f"{TTL:g}s")
    try:
        frozen_id = ident(frozen, tmp_path)
        await eventually(lambda: _machines_are(registry, {frozen_id}), what="the first machine")
        await launch(registry, "svc.service", heartbeat.unit_text(script, beats))
        await eventually(lambda: beating(beats), within=15, what="the unit beating")
        first_pid = await beating(beats)
        other = nodes.start("other", ttl=f"{TTL:g}s")
        other_id = ident(other, tmp_path)
        await eventually(
            lambda: _machines_are(registry, {frozen_id, other_id}), what="two machines"
        )
        os.kill(frozen.pid, signal.SIGSTOP)
        await eventually(
            lambda: beating(beats, pid_not=first_pid), within=TTL + 8, what="a second copy"
        )
        # The frozen agent cannot act; its unit is still alive: the documented window.
        assert process_start_time(first_pid)
        # It wakes up with the store out of reach: only its own clock can tell it the lease
        # is gone.
        proxy.cut()
        os.kill(frozen.pid, signal.SIGCONT)
        resumed = time.time()
        await eventually(lambda: not process_start_time(first_pid), within=3, what="killed")
        gone_after = time.time() - resumed
        assert gone_after < 1.0, gone_after
        proxy.heal()
        await eventually(
            lambda: _machines_are(registry, {frozen_id, other_id}), within=15, what="re-registered"
        )
        assert await running_on(registry, "svc.service") == other_id
        stopped = next(s for s in heartbeat.spans(beats) if s.pid == first_pid)
        assert stopped.last < resumed + 0.5
        text = journal(tmp_path / "frozen", "svc.service")
        assert "fenced: lost the store at" in text, text
    finally:
        if frozen.alive():
            os.kill(frozen.pid, signal.SIGCONT)
        proxy.stop()
        for name in ("frozen", "other"):
            reap_orphans(tmp_path / name / "run", grace=1)


async def test_an_agent_whose_session_ended_on_an_error_still_fences(
    registry: Registry, tmp_path: Path, store: object, sink: RecordingSink
) -> None:
    """A store error ends the agent's session; the lease it gave up still covers the units
    until it ends, so the fence clock keeps running for it while the agent registers again."""
    proxy = TcpProxy.to_url(store.url)  # type: ignore[attr-defined]
    client = make_client([proxy.url])
    via_proxy = Registry(client, registry.prefix)
    machine = Machine("fe0ced01fe0ced01fe0ced01fe0ced01", "127.0.0.1")
    agent, stop, task = start_agent(
        client, via_proxy, machine, tmp_path / "agent", sink, ttl=2, reconcile_interval=1.0
    )
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    try:
        await asyncio.wait_for(agent.registered.wait(), 15)
        await launch(registry, "svc.service", heartbeat.unit_text(script, beats))
        target = registry.key("job", "svc.service", "target")
        await registry.txn([], [registry.put_op(target, machine.id)])
        await eventually(lambda: beating(beats), within=15, what="the unit beating")
        first_pid = await beating(beats)

        async def failing() -> None:
            raise EtcdError("etcdserver: leader changed (injected)")

        # The store goes silent, and the agent's next reconcile fails at once.
        proxy.cut()
        cut_at = time.time()
        agent.reconcile = failing  # type: ignore[method-assign]
        agent._dirty.set()
        await eventually(lambda: not process_start_time(first_pid), within=2 * TTL, what="fence")
        stopped = next(s for s in heartbeat.spans(beats) if s.pid == first_pid)
        assert stopped.last - cut_at < TTL
        assert any("fenced: lost the store at" in m for m in sink.messages("svc.service"))
    finally:
        proxy.heal()
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.close()
        proxy.stop()


async def test_a_lease_ended_early_by_the_store_never_gives_two_copies(
    nodes: NodeFactory, registry: Registry, tmp_path: Path
) -> None:
    """A store may end a lease early (revoked by hand; a stuck etcd leader): the agent kills
    its units at its next renewal, and the engine waits that long before placing them."""
    registry = Registry(registry.client, nodes.prefix)
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    first = nodes.start("first", ttl=f"{TTL:g}s")
    first_id = ident(first, tmp_path)
    await eventually(lambda: _machines_are(registry, {first_id}), what="the first machine")
    await launch(registry, "svc.service", heartbeat.unit_text(script, beats))
    await eventually(lambda: beating(beats), within=15, what="the unit beating")
    first_pid = await beating(beats)
    other = nodes.start("other", ttl=f"{TTL:g}s")
    other_id = ident(other, tmp_path)
    await eventually(lambda: _machines_are(registry, {first_id, other_id}), what="two machines")
    try:
        record = await registry.read_range(registry.key("machines", first_id, "object"))
        await registry.client.revoke_lease(record.kvs[0].lease)
        await eventually(lambda: not process_start_time(first_pid), within=TTL, what="killed")
        await eventually(lambda: running_on(registry, "svc.service"), within=15)
        await asyncio.sleep(1.0)
        found = heartbeat.spans(beats)
        assert not heartbeat.overlaps(found), heartbeat.overlaps(found)
    finally:
        for name in ("first", "other"):
            reap_orphans(tmp_path / name / "run", grace=1)


async def test_a_unit_fenced_while_its_agent_registers_again_starts_again(
    registry: Registry, tmp_path: Path, sink: RecordingSink
) -> None:
    """The store ends the lease early and the agent registers again at once, while its unit
    is still being stopped (here its ExecStopPost takes 1 s): the unit placed on it must run
    again once stopped. A start that found the unit still stopping used to count as done,
    and the unit stayed dead on a live machine for good."""
    machine = Machine("fe0ced02fe0ced02fe0ced02fe0ced02", "127.0.0.1")
    agent, stop, task = start_agent(
        registry.client, registry, machine, tmp_path / "agent", sink, ttl=2,
        reconcile_interval=0.5,
    )  # fmt: skip
    script = heartbeat.write_script(tmp_path)
    beats = tmp_path / "beats-svc"
    try:
        await asyncio.wait_for(agent.registered.wait(), 15)
        text = heartbeat.unit_text(script, beats).replace(
            "TimeoutStopSec=2\n", "TimeoutStopSec=2\nExecStopPost=/bin/sleep 1\n"
        )
        await launch(registry, "svc.service", text)
        target = registry.key("job", "svc.service", "target")
        await registry.txn([], [registry.put_op(target, machine.id)])
        await eventually(lambda: beating(beats), within=15, what="the unit beating")
        first_pid = await beating(beats)
        record = await registry.read_range(registry.key("machines", machine.id, "object"))
        revoked = time.monotonic()
        await registry.client.revoke_lease(record.kvs[0].lease)
        await eventually(lambda: not process_start_time(first_pid), within=TTL, what="killed")
        await eventually(
            lambda: beating(beats, pid_not=first_pid), within=TTL + 5, what="running again"
        )
        assert time.monotonic() - revoked < TTL + 5
        assert agent.fences == 1
        found = heartbeat.spans(beats)
        assert not heartbeat.overlaps(found), heartbeat.overlaps(found)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        reap_orphans(tmp_path / "agent" / "run", grace=1)
