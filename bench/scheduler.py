"""Benchmarks the scheduler: 1,000 simulated machines, 10,000 units, 100 machines lost.

The engine is the real one (backend.fleet.engine) against a real store; the agents are
lightweight stand-ins that publish ``states/<unit>/<machine>`` as soon as a unit is placed
on their machine, so the figures measure the engine and the store, not process start-up.

    python -m bench.scheduler [--quick] [--machines N] [--units N] [--vanish N] [--store KIND]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.backend.fleet.engine import Engine
from clustertui.backend.fleet.registry import MAX_TXN_OPS, Machine, Registry, UnitState
from clustertui.backend.fleet.unitfile import unit_hash
from clustertui.backend.keys import prefix_end
from tests.harness.stores import STARTERS

# Machines share presence leases in groups, so that a whole group vanishes at once the way
# a rack or an availability zone does; one keep-alive per group keeps the bench itself light.
GROUP = 100


@dataclass
class SimulatedAgents:
    """Every simulated machine's agent: follows placements and reports units as running."""

    registry: Registry
    leases: dict[str, int]
    running: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self) -> None:
        client = self.registry.client
        base = self.registry.key("job") + b"/"
        pending: dict[str, str] = {}
        async for batch in client.watch_batches(base, prefix_end(base)):
            for event in batch.events:
                parts = event.kv.key.decode()[len(self.registry.prefix) :].split("/")
                if len(parts) != 3 or parts[2] != "target":
                    continue
                if event.type == rpc.Event.PUT:
                    pending[parts[1]] = json.loads(event.kv.value)
                else:
                    pending[parts[1]] = ""
            if pending:
                await self.publish(pending)
                pending = {}

    async def publish(self, placements: dict[str, str]) -> None:
        ops = []
        for unit, machine in placements.items():
            previous = self.running.pop(unit, "")
            if previous and previous in self.leases:
                ops.append(self.registry.delete_op(self.registry.key("states", unit, previous)))
            if machine and machine in self.leases:
                state = UnitState("loaded", "active", "running", "", machine)
                key = self.registry.key("states", unit, machine)
                ops.append(self.registry.put_op(key, state.to_json(), self.leases[machine]))
                self.running[unit] = machine
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self.registry.txn([], ops[start : start + MAX_TXN_OPS])
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()


async def keep_alive(client: EtcdClient, lease_ids: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for lease_id in lease_ids:
            await client.refresh_lease(lease_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2)


async def measure(url: str, machines: int, units: int, vanish: int) -> dict[str, float]:
    client = make_client([url], timeout=60)
    await client.wait_ready()
    registry = Registry(client, "/bench/fleet/")
    groups = (machines + GROUP - 1) // GROUP
    group_leases = [(await client.lease(30)).id for _ in range(groups)]
    ids = [f"{index:08x}{'0' * 24}" for index in range(machines)]
    leases = {ident: group_leases[index // GROUP] for index, ident in enumerate(ids)}
    ops = [
        registry.put_op(
            registry.key("machines", ident, "object"),
            Machine(ident, f"10.{index // 65536}.{index // 256 % 256}.{index % 256}").to_json(),
            leases[ident],
        )
        for index, ident in enumerate(ids)
    ]
    for start in range(0, len(ops), MAX_TXN_OPS):
        await registry.txn([], ops[start : start + MAX_TXN_OPS])

    stop = asyncio.Event()
    agents = SimulatedAgents(registry, leases)
    engine = Engine(client, registry, "bench-engine", ttl=30, reconcile_interval=5.0)
    tasks = [
        asyncio.create_task(agents.follow()),
        asyncio.create_task(engine.run(stop)),
        asyncio.create_task(keep_alive(client, group_leases, stop)),
    ]
    await engine.elected.wait()

    names = [f"bench-{index:05d}.service" for index in range(units)]
    began = time.monotonic()
    ops = []
    for index, name in enumerate(names):
        raw = f"[Service]\nExecStart=/bin/sleep {index}\n"
        digest = unit_hash(raw)
        ops += [
            registry.put_op(registry.key("unit", digest), {"Raw": raw}),
            registry.put_op(
                registry.key("job", name, "object"), {"Name": name, "UnitHash": digest}
            ),
            registry.put_op(registry.key("job", name, "target-state"), "launched"),
        ]
    step = MAX_TXN_OPS - MAX_TXN_OPS % 3
    for start in range(0, len(ops), step):
        await registry.txn([], ops[start : start + step])
    submitted = time.monotonic() - began
    await agents.until(lambda: len(agents.running) == units)
    launched = time.monotonic() - began

    gone = {
        ident for ident in ids if leases[ident] in group_leases[: (vanish + GROUP - 1) // GROUP]
    }
    displaced = [u for u, m in agents.running.items() if m in gone]
    began = time.monotonic()
    for lease_id in sorted({leases[ident] for ident in gone}):
        await client.revoke_lease(lease_id)
    for ident in gone:
        del leases[ident]
    await agents.until(lambda: all(agents.running.get(u, "") not in ("", *gone) for u in displaced))
    rescheduled = time.monotonic() - began

    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return {
        "submit": submitted,
        "launched": launched,
        "rescheduled": rescheduled,
        "displaced": float(len(displaced)),
        "reconciles": float(engine.reconciles),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 machines, 2,000 units")
    parser.add_argument("--machines", type=int)
    parser.add_argument("--units", type=int)
    parser.add_argument("--vanish", type=int)
    parser.add_argument("--store", choices=sorted(STARTERS), action="append")
    args = parser.parse_args()
    machines = args.machines or (200 if args.quick else 1000)
    units = args.units or (2000 if args.quick else 10_000)
    vanish = args.vanish or max(GROUP, machines // 10)
    kinds = args.store or sorted(STARTERS)
    print(f"{machines} machines, {units} units, {vanish} vanish; stores: {', '.join(kinds)}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as root:
        for kind in kinds:
            store = STARTERS[kind](Path(root) / kind)
            try:
                results[kind] = asyncio.run(measure(store.url, machines, units, vanish))
            finally:
                store.stop()
            figures = results[kind]
            print(
                f"{kind:>8}: submitted in {figures['submit']:.2f}s, all launched after "
                f"{figures['launched']:.2f}s ({units / figures['launched']:.0f} units/s); "
                f"{figures['displaced']:.0f} units of {vanish} lost machines rescheduled in "
                f"{figures['rescheduled']:.2f}s; {figures['reconciles']:.0f} reconciles",
                flush=True,
            )
    if "etcd" in results and len(results) > 1:
        for kind, figures in results.items():
            if kind == "etcd":
                continue
            base = results["etcd"]
            print(
                f"{kind} vs etcd: launch {base['launched'] / figures['launched']:.2f}x, "
                f"reschedule {base['rescheduled'] / figures['rescheduled']:.2f}x (>1 is faster)"
            )
    slow = [k for k, f in results.items() if max(f["launched"], f["rescheduled"]) > 30]
    if slow:
        print(f"over the 30 s target on: {', '.join(slow)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
