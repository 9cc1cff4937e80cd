"""Watch conformance: replay, per-revision batches, filters, prev_kv, progress, cancel."""

from __future__ import annotations

import asyncio

import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.keys import prefix_end
from tests.kv.conftest import RawWatch


def _summary(response: rpc.WatchResponse, ns: bytes) -> list[tuple[str, bytes, bytes]]:
    return [
        (rpc.Event.EventType.Name(e.type), e.kv.key[len(ns) :], e.kv.value) for e in response.events
    ]


async def test_a_watch_created_now_reports_the_current_revision(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    current = (await kv.put(ns + b"k", b"1")).header.revision
    created = await raw_watch.create(ns + b"k")
    assert created.created is True
    assert created.header.revision == current
    assert created.header.member_id


async def test_events_of_one_txn_arrive_together_with_their_revision(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    await raw_watch.create(ns, prefix_end(ns))
    response = await kv.kvstub.Txn(
        rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"a", value=b"1")),
                rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"b", value=b"2")),
            ]
        )
    )
    batch = await raw_watch.next()
    assert _summary(batch, ns) == [("PUT", b"a", b"1"), ("PUT", b"b", b"2")]
    assert batch.header.revision == response.header.revision
    assert {e.kv.mod_revision for e in batch.events} == {response.header.revision}


async def test_a_watch_from_an_old_revision_replays_puts_and_deletes_in_order(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    first = (await kv.put(ns + b"a", b"1")).header.revision
    await kv.put(ns + b"b", b"2")
    await kv.delete(ns + b"a")
    await raw_watch.create(ns, prefix_end(ns), start_revision=first)
    events: list[tuple[str, bytes, bytes]] = []
    while len(events) < 3:
        events += _summary(await raw_watch.next(), ns)
    assert events == [("PUT", b"a", b"1"), ("PUT", b"b", b"2"), ("DELETE", b"a", b"")]


async def test_filters_drop_puts_or_deletes(kv: EtcdClient, ns: bytes, raw_watch: RawWatch) -> None:
    await raw_watch.create(ns, prefix_end(ns), filters=[rpc.WatchCreateRequest.NOPUT])
    await kv.put(ns + b"x", b"1")
    await kv.delete(ns + b"x")
    only_delete = await raw_watch.next()
    assert _summary(only_delete, ns) == [("DELETE", b"x", b"")]


async def test_prev_kv_carries_the_value_before_each_event(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    await kv.put(ns + b"p", b"old")
    await raw_watch.create(ns + b"p", prev_kv=True)
    await kv.put(ns + b"p", b"new")
    await kv.delete(ns + b"p")
    events: list[rpc.Event] = []
    while len(events) < 2:
        events += list((await raw_watch.next()).events)
    assert [(e.kv.value, e.prev_kv.value) for e in events] == [(b"new", b"old"), (b"", b"new")]


async def test_a_progress_request_answers_with_the_current_revision(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    await raw_watch.create(ns + b"quiet")
    current = (await kv.put(ns + b"other", b"1")).header.revision
    await raw_watch.send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
    progress = await raw_watch.next()
    assert list(progress.events) == []
    assert progress.header.revision == current
    assert progress.watch_id == -1


async def test_a_canceled_watch_says_so_and_gets_nothing_more(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    first = await raw_watch.create(ns + b"c")
    second = await raw_watch.create(ns + b"d")
    assert second.watch_id != first.watch_id
    await raw_watch.send(
        rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=first.watch_id))
    )
    canceled = await raw_watch.next()
    assert (canceled.watch_id, canceled.canceled) == (first.watch_id, True)
    await kv.put(ns + b"c", b"ignored")
    await kv.put(ns + b"d", b"seen")
    after = await raw_watch.next()
    assert after.watch_id == second.watch_id
    assert _summary(after, ns) == [("PUT", b"d", b"seen")]


async def test_many_watchers_of_one_key_each_get_the_event(kv: EtcdClient, ns: bytes) -> None:
    watches = [await kv.watch(ns + b"many") for _ in range(20)]
    await kv.put(ns + b"many", b"v")
    events = await asyncio.gather(*(asyncio.wait_for(anext(w.__aiter__()), 5) for w in watches))
    assert {e.kv.value for e in events} == {b"v"}
    for watch in watches:
        await watch.cancel()


async def test_a_watch_from_a_compacted_revision_is_canceled_with_the_compaction_point(
    fresh_kv: EtcdClient,
) -> None:
    kv = fresh_kv
    first = (await kv.put(b"k", b"1")).header.revision
    second = (await kv.put(b"k", b"2")).header.revision
    await kv.kvstub.Compact(rpc.CompactionRequest(revision=second))
    watch = RawWatch(kv)
    created = await watch.create(b"k", start_revision=first)
    responses = [created]
    if not created.canceled:
        responses.append(await watch.next())
    await watch.close()
    last = responses[-1]
    assert (last.canceled, last.compact_revision) == (True, second)
    at_point = RawWatch(kv)
    await at_point.create(b"k", start_revision=second)
    replay = await at_point.next()
    await at_point.close()
    assert [e.kv.value for e in replay.events] == [b"2"]


@pytest.mark.slow
async def test_a_client_that_reads_late_still_gets_every_event_in_order(
    kv: EtcdClient, ns: bytes, raw_watch: RawWatch
) -> None:
    await raw_watch.create(ns, prefix_end(ns))
    value = b"x" * 2048
    total = 3000

    async def writer(first: int) -> None:
        for i in range(first, total, 32):
            await kv.put(ns + b"%05d" % i, value)

    # Nobody reads the watch while the writes go on, so its stream backs up on the server.
    await asyncio.gather(*(writer(w) for w in range(32)))
    seen: list[tuple[int, bytes]] = []
    while len(seen) < total:
        response = await raw_watch.next()
        seen += [(e.kv.mod_revision, e.kv.key) for e in response.events]
    assert len(seen) == total
    assert [revision for revision, _key in seen] == sorted({revision for revision, _key in seen})
    assert {key for _revision, key in seen} == {ns + b"%05d" % i for i in range(total)}
