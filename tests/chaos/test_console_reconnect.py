"""The console's cluster feed is live again soon after a store that was away comes back.

The chaos suite's pane check (the Units pane equals a fresh read within 2 s of a heal) failed
about one bundled run in six after a store restart, with the pane showing the store as it was
just before the restart. The feed slept its own backoff on top of the gRPC channel's (which
dialled the store again only every 3 s once the store had been away a few seconds), so it
could resume watching 4 s after the store was back. Here: a store away long enough for the
channel's backoff to reach its cap, then back; a write made at once must reach the feed's
model within 1.5 s of the store's return, every time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from clustertui.backend.etcd import make_client
from clustertui.console.cluster import ClusterFeed, ClusterModel
from tests.harness.stores import RunningStore

pytestmark = pytest.mark.slow
AWAY = 7.0
"""Seconds the store is down: the channel's reconnect backoff grows to its cap by then."""
ROUNDS = 3
WITHIN = 1.5


def start(store: RunningStore) -> None:
    started = store.start()  # type: ignore[attr-defined]
    if hasattr(started, "wait_ready"):
        started.wait_ready(30)


async def test_the_feed_resumes_within_a_second_or_so_of_a_store_restart(
    fresh_store: RunningStore,
) -> None:
    model = ClusterModel()
    client = make_client([fresh_store.url])
    feed = ClusterFeed(client, model)
    task = asyncio.create_task(feed.run())
    key = model.prefix + "states/svc.service/{}"
    lags: list[float] = []
    try:
        await asyncio.wait_for(model.loaded.wait(), 30)
        for round_ in range(ROUNDS):
            await asyncio.to_thread(fresh_store.stop)
            await asyncio.sleep(AWAY)
            await asyncio.to_thread(start, fresh_store)
            back = time.monotonic()
            # A client of its own, without the feed's backoff: it writes as soon as it can.
            writer = make_client([fresh_store.url])
            try:
                await writer.wait_ready(30)
                await writer.put(key.format(f"m{round_}").encode(), b'{"activeState":"active"}')
            finally:
                await writer.close()
            while f"m{round_}" not in model.fleet.states.get("svc.service", {}):
                feed.drain()
                assert time.monotonic() - back < 30, "the feed never caught up"
                await asyncio.sleep(0.02)
            lags.append(round(time.monotonic() - back, 2))
        assert max(lags) < WITHIN, f"the feed caught up {lags} s after the store was back"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
