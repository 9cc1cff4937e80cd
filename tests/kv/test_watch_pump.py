"""The watch pump in memory: budgets, chunked replays that yield, victims that catch up.

A real store (backend/kv/apply.Store on a temporary directory) and real watch streams, with
the client played by the test: ``deliver`` refuses (a client that is not reading), and the
test takes responses off the stream when it wants to read.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aetcd import rpc

from clustertui.backend.kv.apply import Config, Store
from clustertui.backend.kv.mvcc import Writer
from clustertui.backend.kv.watch import (
    CHUNK_BYTES,
    CONNECTION_BUDGET,
    STREAM_BUDGET,
    Budget,
    WatchStream,
)

PREFIX = b"/h/"
END = b"/h0"


def _store(tmp_path: Path) -> Store:
    return Store(Config(data_dir=tmp_path / "kv"))


def _write(store: Store, count: int, value: bytes) -> list[int]:
    """``count`` revisions, one key each, made durable and published as the WAL would."""
    batches = []
    for _ in range(count):
        writer = Writer(store.space)
        writer.put(PREFIX + b"%06d" % (store.space.revision + 1), value, 0)
        batch = writer.finish()
        assert batch is not None
        batches.append(batch)
    store._published(batches)
    return [batch.revision for batch in batches]


def _not_reading(stream: WatchStream) -> WatchStream:
    stream.deliver = lambda data: False
    return stream


async def _read_all(stream: WatchStream, want: int, timeout: float = 20.0) -> list[rpc.Event]:
    """Takes responses off the stream as a reading client would, until ``want`` events."""
    events: list[rpc.Event] = []
    async with asyncio.timeout(timeout):
        while len(events) < want:
            data = await stream.next_output()
            assert data is not None
            stream.written()
            events += rpc.WatchResponse.FromString(data).events
    return events


def _watch(start: int) -> rpc.WatchCreateRequest:
    return rpc.WatchCreateRequest(key=PREFIX, range_end=END, start_revision=start)


async def test_a_replay_for_a_client_that_reads_nothing_stops_at_its_budget(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    revisions = _write(store, 2500, b"v" * 4096)  # 10 MB of history
    stream = _not_reading(WatchStream(store, Budget()))
    stream.create(_watch(1))
    await asyncio.sleep(0.3)
    # The created response, then replay chunks until the budget is full: one chunk past it
    # at most, never the whole history.
    assert STREAM_BUDGET <= stream.queued <= STREAM_BUDGET + CHUNK_BYTES + 8192
    events = await _read_all(stream, len(revisions))
    assert [e.kv.mod_revision for e in events] == revisions
    stream.close()


async def test_the_streams_of_one_connection_share_one_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _write(store, 2500, b"v" * 4096)
    budget = Budget()
    streams = [_not_reading(WatchStream(store, budget)) for _ in range(12)]
    for stream in streams:
        stream.create(_watch(1))
    await asyncio.sleep(0.3)
    assert budget.used == sum(stream.queued for stream in streams)
    assert CONNECTION_BUDGET <= budget.used <= CONNECTION_BUDGET + CHUNK_BYTES + 8192
    for stream in streams:
        stream.close()
    assert budget.used == 0


async def test_a_long_replay_yields_to_the_event_loop(tmp_path: Path) -> None:
    store = _store(tmp_path)
    revisions = _write(store, 2500, b"v" * 4096)
    stream = WatchStream(store, Budget())
    taken: list[rpc.Event] = []
    done = asyncio.Event()

    def deliver(data: bytes) -> bool:  # a client that takes everything at once
        taken.extend(rpc.WatchResponse.FromString(data).events)
        if len(taken) >= len(revisions):
            done.set()
        return True

    ticks_during = 0

    async def ticker() -> None:
        nonlocal ticks_during
        while not done.is_set():
            await asyncio.sleep(0)
            if 0 < len(taken) < len(revisions):
                ticks_during += 1

    stream.deliver = deliver
    tick = asyncio.ensure_future(ticker())
    stream.create(_watch(1))
    async with asyncio.timeout(20):
        await done.wait()
    await tick
    assert [e.kv.mod_revision for e in taken] == revisions
    # Ten megabytes were built in slices, and the loop ran other work between them.
    assert ticks_during >= 20, f"the loop ran other work {ticks_during} times during the replay"
    stream.close()


async def test_a_watcher_behind_its_budget_catches_up_from_history_in_order(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    stream = _not_reading(WatchStream(store, Budget()))
    stream.create(_watch(0))
    await asyncio.sleep(0)
    revisions = []
    for _ in range(40):  # 40 rounds of 10 revisions of 16 KB: 6.4 MB, none read
        revisions += _write(store, 10, b"x" * 16384)
        await asyncio.sleep(0.005)
    # One response past the budget at most, and a response ends once it holds a chunk.
    assert stream.queued <= STREAM_BUDGET + CHUNK_BYTES + 16384 + 1024
    assert stream.lagging, "it fell behind its budget, so it is a victim now"
    events = await _read_all(stream, len(revisions))
    assert [e.kv.mod_revision for e in events] == revisions
    assert not stream.lagging
    stream.close()


async def test_revisions_ready_together_go_to_each_watcher_in_one_response(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    stream = _not_reading(WatchStream(store, Budget()))
    stream.create(_watch(0))
    created = await stream.next_output()
    assert created is not None
    stream.written()
    revisions = _write(store, 5, b"v")  # durable in one group, as a WAL group commit does
    await asyncio.sleep(0.05)
    data = await stream.next_output()
    assert data is not None
    response = rpc.WatchResponse.FromString(data)
    assert [e.kv.mod_revision for e in response.events] == revisions
    assert response.header.revision == revisions[-1]
    stream.close()


async def test_a_replay_of_one_key_among_many_gets_its_events_in_chunks(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mine = []
    for i in range(3000):  # every seventh revision changes the watched key
        writer = Writer(store.space)
        key = PREFIX + (b"mine" if i % 7 == 0 else b"other%d" % i)
        writer.put(key, b"%d" % i, 0)
        batch = writer.finish()
        assert batch is not None
        store._published([batch])
        if i % 7 == 0:
            mine.append(batch.revision)
    stream = _not_reading(WatchStream(store, Budget()))
    stream.create(rpc.WatchCreateRequest(key=PREFIX + b"mine", start_revision=1))
    responses = []
    async with asyncio.timeout(10):
        while sum(len(r.events) for r in responses) < len(mine):
            data = await stream.next_output()
            assert data is not None
            stream.written()
            response = rpc.WatchResponse.FromString(data)
            if response.events:
                responses.append(response)
    events = [e for r in responses for e in r.events]
    assert [e.kv.mod_revision for e in events] == mine
    # As etcd: at most 1,000 revisions a response, and the header at or after its events.
    for response in responses:
        revisions = [e.kv.mod_revision for e in response.events]
        assert revisions[-1] - revisions[0] < 1000
        assert response.header.revision >= revisions[-1]
    assert len(responses) >= 3
    later = _write(store, 1, b"live")  # and then it follows live (a key under PREFIX: not its)
    writer = Writer(store.space)
    writer.put(PREFIX + b"mine", b"live", 0)
    batch = writer.finish()
    assert batch is not None
    store._published([batch])
    data = await stream.next_output()
    assert data is not None
    assert [e.kv.mod_revision for e in rpc.WatchResponse.FromString(data).events] == [
        batch.revision
    ]
    assert batch.revision == later[0] + 1
    stream.close()
