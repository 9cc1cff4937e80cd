"""The client factory against real etcd: the operations every part relies on."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from clustertui.backend.etcd import (
    ConfigError,
    EtcdClient,
    RevisionCompacted,
    StoreUnavailable,
    make_client,
)
from clustertui.backend.keys import prefix_end
from tests.harness.etcd import EtcdMember
from tests.harness.procs import REPO, free_port


async def test_put_then_get_returns_the_value_and_its_revisions(kv: EtcdClient, ns: bytes) -> None:
    put = await kv.put(ns + b"a", b"1")
    got = await kv.get(ns + b"a")
    assert got is not None
    assert got.value == b"1"
    assert got.version == 1
    assert got.mod_revision == put.header.revision == got.create_revision


async def test_prefix_range_returns_only_keys_under_the_prefix_in_key_order(
    kv: EtcdClient, ns: bytes
) -> None:
    for name in (b"b", b"a", b"c/d"):
        await kv.put(ns + name, name)
    await kv.put(ns[:-1] + b"x", b"outside")
    found = await kv.get_prefix(ns)
    assert [item.key for item in found] == [ns + b"a", ns + b"b", ns + b"c/d"]


async def test_watch_sees_a_put_made_after_it_started(kv: EtcdClient, ns: bytes) -> None:
    watch = await kv.watch(ns + b"w")
    await kv.put(ns + b"w", b"hello")
    event = await asyncio.wait_for(anext(watch.__aiter__()), 5)
    assert (event.kv.key, event.kv.value) == (ns + b"w", b"hello")
    await watch.cancel()


async def test_watch_from_a_past_revision_replays_the_history(kv: EtcdClient, ns: bytes) -> None:
    first = await kv.put(ns + b"h", b"1")
    await kv.put(ns + b"h", b"2")
    await kv.delete(ns + b"h")
    watch = await kv.watch(ns + b"h", start_revision=first.header.revision)
    events = []
    async for event in watch:
        events.append((str(event.kind), event.kv.value))
        if len(events) == 3:
            break
    await watch.cancel()
    assert events == [("PUT", b"1"), ("PUT", b"2"), ("DELETE", b"")]


async def test_a_key_on_a_lease_vanishes_when_the_lease_expires(kv: EtcdClient, ns: bytes) -> None:
    lease = await kv.lease(1)
    await kv.put(ns + b"ttl", b"x", lease=lease)
    assert await kv.get(ns + b"ttl") is not None
    for _ in range(60):
        if await kv.get(ns + b"ttl") is None:
            break
        await asyncio.sleep(0.1)
    assert await kv.get(ns + b"ttl") is None
    info = await kv.get_lease_info(lease.id)
    assert info.TTL == -1


async def test_compare_and_swap_applies_only_when_the_value_matches(
    kv: EtcdClient, ns: bytes
) -> None:
    key = ns + b"cas"
    await kv.put(key, b"old")
    assert await kv.replace(key, b"old", b"new") is True
    assert await kv.replace(key, b"old", b"newer") is False
    got = await kv.get(key)
    assert got is not None and got.value == b"new"


async def test_watching_from_a_compacted_revision_raises_revision_compacted(
    fresh_etcd: EtcdMember,
) -> None:
    client = make_client(fresh_etcd.url)
    first = await client.put(b"k", b"1")
    second = await client.put(b"k", b"2")
    await client.compact(second.header.revision)
    with pytest.raises(RevisionCompacted) as caught:
        async for _batch in client.watch_batches(b"k", start_revision=first.header.revision):
            pass
    assert caught.value.compacted_revision == second.header.revision
    await client.close()


async def test_watch_batches_carry_the_revision_to_resume_from(kv: EtcdClient, ns: bytes) -> None:
    first = await kv.put(ns + b"r", b"1")
    await kv.put(ns + b"r", b"2")
    stream = kv.watch_batches(ns, prefix_end(ns), start_revision=first.header.revision)
    seen: list[bytes] = []
    last = 0
    async for batch in stream:
        seen += [event.kv.value for event in batch.events]
        last = batch.revision
        if len(seen) == 2:
            break
    await stream.aclose()
    assert seen == [b"1", b"2"]
    await kv.put(ns + b"r", b"3")
    resumed = kv.watch_batches(ns, prefix_end(ns), start_revision=last + 1)
    batch = await asyncio.wait_for(anext(resumed), 5)
    await resumed.aclose()
    assert [event.kv.value for event in batch.events] == [b"3"]


async def test_an_endpoint_nobody_listens_on_gives_store_unavailable() -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(StoreUnavailable) as caught:
        await client.get(b"k")
    assert "reachable" in str(caught.value)
    await client.close()


@pytest.mark.parametrize(
    "endpoints, complaint",
    [
        ("ftp://host:1", "scheme"),
        ("http://:2379", "no host"),
        ("http://a:1,https://b:2", "mix"),
    ],
)
def test_unusable_endpoints_are_refused_with_the_reason(endpoints: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        make_client(endpoints)


IDLE_CLIENT = """
import asyncio, sys
from clustertui.backend.etcd import make_client

async def main():
    client = make_client([sys.argv[1]])
    await client.put(b"/idle/k", b"v")
    await asyncio.sleep(float(sys.argv[2]))  # idle: no call, no watch
    print((await client.get(b"/idle/k")).value.decode())
    await client.close()

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_idle_client_is_not_sent_away_by_etcd_for_pinging(etcd: EtcdMember) -> None:
    # etcd counts pings on a connection without streams as strikes; after two it answers
    # GOAWAY "too_many_pings", which gRPC reports on stderr (in clusterctl's output, say).
    done = subprocess.run(
        [sys.executable, "-c", IDLE_CLIENT, etcd.url, "32"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.stdout == "v\n", done.stderr
    assert "too_many_pings" not in done.stderr
    assert "GOAWAY" not in done.stderr
