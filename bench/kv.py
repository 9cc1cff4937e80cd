"""Benchmarks the bundled store against real etcd: put/get throughput and watch latency.

Both stores run on loopback with durable writes (etcd fsyncs its WAL; `clusterd kv` fsyncs
with group commit), and both are driven by the same aetcd-based client in the same run.

    python -m bench.kv [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from backend.etcd import EtcdClient, make_client
from tests.harness.bundled import start_bundled
from tests.harness.etcd import start_etcd
from tests.harness.stores import RunningStore

CONCURRENCY = 64


async def _rate(op: Callable[[int], Awaitable[object]], seconds: float, tasks: int) -> float:
    """Operations per second of ``tasks`` concurrent loops calling ``op`` for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(first: int) -> None:
        nonlocal done
        i = first
        while time.perf_counter() < deadline:
            await op(i)
            i += tasks
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(t) for t in range(tasks)))
    return done / (time.perf_counter() - start)


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


THROUGHPUT = [
    ("put sequential", "put", 1),
    ("get sequential", "get", 1),
    (f"put {CONCURRENCY}-concurrent", "put", CONCURRENCY),
    (f"get {CONCURRENCY}-concurrent", "get", CONCURRENCY),
]


async def measure(
    stores: dict[str, RunningStore], seconds: float, events: int
) -> dict[str, dict[str, float]]:
    """Every figure for every store, taking turns per measure so both see the same machine load."""
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

    for client in clients.values():
        await _rate(ops(client)["put"], 0.5, CONCURRENCY)  # warm up channels and stores
    for name, op, tasks in THROUGHPUT:
        for kind, client in clients.items():
            figures[kind][name] = await _rate(ops(client)[op], seconds, tasks)
    for watchers in (1, 100):
        for kind, client in clients.items():
            p50, p99 = await _watch_latency(client, watchers, events)
            figures[kind][f"watch p50 ms ({watchers} watchers)"] = p50
            figures[kind][f"watch p99 ms ({watchers} watchers)"] = p99
    for client in clients.values():
        await client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    args = parser.parse_args()
    seconds, events = (2.0, 200) if args.quick else (6.0, 1000)
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        root = Path(tmp)
        stores: dict[str, RunningStore] = {}
        try:
            stores["etcd"] = start_etcd(root / "etcd")
            stores["bundled"] = start_bundled(root / "bundled")
            figures = asyncio.run(measure(stores, seconds, events))
        finally:
            for store in stores.values():
                store.stop()
    print(f"{'measure':32} {'etcd':>10} {'bundled':>10} {'bundled/etcd':>13}")
    for name, real in figures["etcd"].items():
        ours = figures["bundled"][name]
        # For latencies lower is better; the ratio still reads bundled over etcd.
        print(f"{name:32} {real:10.1f} {ours:10.1f} {ours / real:12.2f}x")


if __name__ == "__main__":
    main()
