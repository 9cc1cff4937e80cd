"""Benchmarks the bundled store against real etcd: put/get throughput, latency, watch latency.

Both stores run on loopback with durable writes (etcd fsyncs its WAL; `clusterd kv` fsyncs
with group commit), and both are driven by the same aetcd-based client in the same run.

    python -m bench.kv [--quick] [--tool-only | --no-tool]

A second section runs etcd's own load generator, `benchmark` (range, put and watch), against
both stores in the same run (bench/_etcd_tool.py); it says so when the tool is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import _etcd_tool as etcd_tool
from clustertui.backend.etcd import EtcdClient, make_client
from tests.harness.bundled import start_bundled
from tests.harness.etcd import start_etcd
from tests.harness.stores import RunningStore

CONCURRENCY = 64


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rate(
    op: Callable[[int], Awaitable[object]], seconds: float, tasks: int, pid: int
) -> tuple[float, float]:
    """Ops per second of ``tasks`` concurrent loops over ``seconds``, and server CPU µs per op."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(first: int) -> None:
        nonlocal done
        i = first
        while time.perf_counter() < deadline:
            await op(i)
            i += tasks
            done += 1

    cpu = _cpu_seconds(pid)
    start = time.perf_counter()
    await asyncio.gather(*(loop(t) for t in range(tasks)))
    elapsed = time.perf_counter() - start
    return done / elapsed, (_cpu_seconds(pid) - cpu) * 1e6 / max(done, 1)


async def _watch_latency(client: EtcdClient, watchers: int, events: int) -> tuple[float, float]:
    """Milliseconds from issuing a put to each watcher receiving it: (p50, p99)."""
    key = b"/bench/watch/%d" % watchers
    latencies: list[float] = []
    sent: dict[bytes, float] = {}
    ready = asyncio.Event()
    seen = 0

    async def watch() -> None:
        nonlocal seen
        stream = client.watch_batches(key)
        async for batch in stream:
            now = time.perf_counter()
            for event in batch.events:
                latencies.append((now - sent[event.kv.value]) * 1000)
            seen += 1
            if seen == watchers:
                ready.set()

    tasks = [asyncio.ensure_future(watch()) for _ in range(watchers)]
    # Watches are created asynchronously: a put must reach every watcher before timing starts.
    while True:
        ready.clear()
        seen = 0
        sent[b"warm"] = time.perf_counter()
        await client.put(key, b"warm")
        try:
            await asyncio.wait_for(ready.wait(), 0.5)
            break
        except TimeoutError:
            continue
    latencies.clear()
    for i in range(events):
        value = b"%d" % i
        ready.clear()
        seen = 0
        sent[value] = time.perf_counter()
        await client.put(key, value)
        await asyncio.wait_for(ready.wait(), 10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def _tail_latency(client: EtcdClient, total: int) -> tuple[float, float, float, float]:
    """Put latency over ``total`` puts from 64 concurrent writers: (p50, p99, p99.9, max) ms.

    The run is long enough to cross a snapshot (etcd's and ours both take one every 100,000
    writes) and to grow the history, so stalls that only come with size show here.
    """
    value = b"v" * 100
    latencies: list[float] = []
    issued = 0

    async def writer() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            key = b"/bench/tail/%06d" % (issued % 50_000)
            start = time.perf_counter()
            await client.put(key, value)
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(writer() for _ in range(CONCURRENCY)))
    ordered = sorted(latencies)
    n = len(ordered)
    return ordered[n // 2], ordered[int(n * 0.99)], ordered[int(n * 0.999)], ordered[-1]


THROUGHPUT = [
    ("put sequential", "put", 1),
    ("get sequential", "get", 1),
    (f"put {CONCURRENCY}-concurrent", "put", CONCURRENCY),
    (f"get {CONCURRENCY}-concurrent", "get", CONCURRENCY),
]


async def measure(
    stores: dict[str, RunningStore], seconds: float, rounds: int, events: int, tail: int = 0
) -> dict[str, dict[str, float]]:
    """Every figure for every store.

    The stores take turns, ``rounds`` times per measure, and each figure is the median of
    its rounds: the machine is shared, and turns give both stores the same background load.
    """
    clients = {kind: make_client([store.url]) for kind, store in stores.items()}
    for client in clients.values():
        await client.wait_ready()
    value = b"v" * 100
    figures: dict[str, dict[str, float]] = {kind: {} for kind in stores}

    def ops(client: EtcdClient) -> dict[str, Callable[[int], Awaitable[object]]]:
        async def put(i: int) -> None:
            await client.put(b"/bench/k/%06d" % (i % 1000), value)

        async def get(i: int) -> None:
            await client.get(b"/bench/k/%06d" % (i % 1000))

        return {"put": put, "get": get}

    pids = {kind: _pid(store) for kind, store in stores.items()}
    for kind, client in clients.items():
        await _rate(ops(client)["put"], 0.5, CONCURRENCY, pids[kind])  # warm up
    for name, op, tasks in THROUGHPUT:
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in stores}
        for _round in range(rounds):
            for kind, client in clients.items():
                samples[kind].append(await _rate(ops(client)[op], seconds, tasks, pids[kind]))
        for kind, taken in samples.items():
            figures[kind][f"{name} ops/s"] = statistics.median(rate for rate, _cpu in taken)
            figures[kind][f"{name} server CPU us/op"] = statistics.median(c for _r, c in taken)
    for watchers in (1, 100):
        for kind, client in clients.items():
            p50, p99 = await _watch_latency(client, watchers, events)
            figures[kind][f"watch p50 ms ({watchers} watchers)"] = p50
            figures[kind][f"watch p99 ms ({watchers} watchers)"] = p99
    if tail:
        for kind, client in clients.items():
            p50, p99, p999, worst = await _tail_latency(client, tail)
            label = f"put latency {tail // 1000}k x {CONCURRENCY}-concurrent"
            figures[kind][f"{label} p50 ms"] = p50
            figures[kind][f"{label} p99 ms"] = p99
            figures[kind][f"{label} p99.9 ms"] = p999
            figures[kind][f"{label} max ms"] = worst
    for client in clients.values():
        await client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    parser.add_argument(
        "--tool-only", action="store_true", help="only the section run by etcd's `benchmark` tool"
    )
    parser.add_argument(
        "--no-tool", action="store_true", help="leave out the section run by etcd's `benchmark`"
    )
    args = parser.parse_args()
    seconds, rounds, events, tail = (1.0, 3, 200, 0) if args.quick else (2.0, 5, 1000, 250_000)
    figures: dict[str, dict[str, float]] = {}
    tool_figures: dict[str, dict[str, float]] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        root = Path(tmp)
        stores: dict[str, RunningStore] = {}
        try:
            stores["etcd"] = start_etcd(root / "etcd")
            stores["bundled"] = start_bundled(root / "bundled")
            if not args.tool_only:
                figures = asyncio.run(measure(stores, seconds, rounds, events, tail))
            if not args.no_tool:
                pids = {kind: _pid(store) for kind, store in stores.items()}
                tool_figures = etcd_tool.measure(stores, pids, args.quick, 1 if args.quick else 3)
        finally:
            for store in stores.values():
                store.stop()
    if figures:
        print_figures(figures)
    if not args.no_tool:
        print()
        if tool_figures is None:
            print(etcd_tool.missing_note())
        else:
            print("etcd's own `benchmark` tool (v3.4), against both stores in the same run:")
            print_figures(tool_figures)


def print_figures(figures: dict[str, dict[str, float]]) -> None:
    width = max(48, *(len(name) for name in figures["etcd"]))
    print(f"{'measure':{width}} {'etcd':>9} {'bundled':>9} {'bundled/etcd':>13}")
    for name, real in figures["etcd"].items():
        ours = figures["bundled"][name]
        # For CPU and latency lower is better; the ratio still reads bundled over etcd.
        print(f"{name:{width}} {real:9.1f} {ours:9.1f} {ours / real:12.2f}x")


def _pid(store: RunningStore) -> int:
    child = getattr(store, "child", None)
    assert child is not None, "the bench starts its stores as child processes"
    return int(child.pid)


if __name__ == "__main__":
    main()
