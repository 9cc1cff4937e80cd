"""A store that shuts down ends its watch streams with UNAVAILABLE, as etcd does, never OK.

A watcher that gets a clean end (status OK) cannot tell it from a server that meant it; the
console treats one as a drop anyway, but other clients (etcdctl, aetcd) take it as the end.
"""

from __future__ import annotations

import asyncio

import grpc

from clustertui.backend.etcd import make_client
from tests.harness.stores import RunningStore
from tests.kv.conftest import RawWatch


async def test_a_store_stopping_ends_watch_streams_unavailable(
    fresh_store: RunningStore,
) -> None:
    client = make_client([fresh_store.url])
    await client.wait_ready()
    watches = [RawWatch(client) for _ in range(2)]
    try:
        for number, watch in enumerate(watches):
            created = await watch.create(f"/shutdown/{number}".encode(), progress_notify=True)
            assert created.created
        await client.put(b"/shutdown/0", b"x")
        event = await watches[0].next()
        assert [bytes(e.kv.key) for e in event.events] == [b"/shutdown/0"]
        await asyncio.to_thread(fresh_store.stop)  # SIGTERM: a clean shutdown
        for watch in watches:
            try:
                response = await watch.next()
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                continue
            # grpc.aio reads a stream ended with status OK as EOF: the store said "done".
            raise AssertionError(
                f"the stream went on, or ended cleanly, after a shutdown: {response}"
            )
    finally:
        for watch in watches:
            await watch.close()
        await client.close()
