"""Watches that a client does not read cost the store a bounded amount of memory and time.

A raw HTTP/2 client on a plain socket plays the attacker: it opens Watch streams, asks them to
replay the whole history, and then never reads and never opens its receive window. The store
runs as a child process (tests/harness) so its RSS can be read from /proc, and a normal client
keeps probing it meanwhile. Each attack is bounded in count and time, on loopback only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

import hpack
import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, make_client
from tests.harness.stores import RunningStore

pytestmark = pytest.mark.slow

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, WINDOW_UPDATE, PING, GOAWAY, RST_STREAM = 0, 1, 4, 8, 6, 7, 3
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MB = 1024 * 1024


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def _rss(store: RunningStore) -> int:
    """The store process's resident set, in bytes."""
    pid = store.child.pid  # type: ignore[attr-defined]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RawWatchClient:
    """Watch streams over one raw HTTP/2 connection; reads only when told to."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.socket()
        # A small receive buffer: what the store cannot send stays in the store.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        self.encoder = hpack.Encoder()
        self.next_stream = 1
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        self.buffer = bytearray()
        self.messages: dict[int, bytearray] = {}
        self.responses: dict[int, list[rpc.WatchResponse]] = {}
        self.ended: set[int] = set()
        self.reading = False

    def open_watch(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/etcdserverpb.Watch/Watch"),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream_id, block))
        self.messages[stream_id] = bytearray()
        self.responses[stream_id] = []
        return stream_id

    def create(self, stream_id: int, key: bytes, range_end: bytes, start_revision: int) -> None:
        request = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision
            )
        ).SerializeToString()
        message = b"\0" + struct.pack(">I", len(request)) + request
        self.sock.sendall(_frame(DATA, 0, stream_id, message))

    def read_for(self, seconds: float, open_windows: bool = True) -> None:
        """Reads, and opens the windows for what it read, for ``seconds``.

        The first time with ``open_windows``, it also opens its windows wide (4 MiB a
        stream, 16 MiB more for the connection), as a client that reads does.
        """
        if open_windows and not self.reading:
            self.reading = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.sendall(
                _frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 4 * MB))
                + _frame(WINDOW_UPDATE, 0, 0, (16 * MB).to_bytes(4, "big"))
            )
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            self.buffer += data
            self._frames()

    def _frames(self) -> None:
        buffer = self.buffer
        acks = bytearray()
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[9 : 9 + length])
            del buffer[: 9 + length]
            if kind == DATA:
                if length:
                    increment = length.to_bytes(4, "big")
                    acks += _frame(WINDOW_UPDATE, 0, 0, increment)
                    acks += _frame(WINDOW_UPDATE, 0, stream_id, increment)
                self._data(stream_id, payload)
            elif kind == SETTINGS and not flags & ACK:
                acks += _frame(SETTINGS, ACK, 0)
            elif kind == PING and not flags & ACK:
                acks += _frame(PING, ACK, 0, payload)
            elif kind in (RST_STREAM, GOAWAY) or (kind == HEADERS and flags & END_STREAM):
                self.ended.add(stream_id)
        if acks:
            self.sock.sendall(bytes(acks))

    def _data(self, stream_id: int, payload: bytes) -> None:
        pending = self.messages.setdefault(stream_id, bytearray())
        pending += payload
        while len(pending) >= 5:
            size = int.from_bytes(pending[1:5], "big")
            if len(pending) < 5 + size:
                break
            body = bytes(pending[5 : 5 + size])
            del pending[: 5 + size]
            self.responses.setdefault(stream_id, []).append(rpc.WatchResponse.FromString(body))

    def events(self, stream_id: int) -> list[rpc.Event]:
        return [e for r in self.responses.get(stream_id, []) for e in r.events]

    def close(self) -> None:
        self.sock.close()


async def _fill(client: EtcdClient, prefix: bytes, total_bytes: int, value_size: int) -> int:
    """Writes ``total_bytes`` of values under ``prefix``; returns how many puts."""
    count = total_bytes // value_size
    value = os.urandom(value_size // 2).hex().encode()

    async def writer(first: int) -> None:
        for i in range(first, count, 32):
            await client.put(prefix + b"%06d" % i, value)

    await asyncio.gather(*(writer(w) for w in range(32)))
    return count


async def _probe(client: EtcdClient, key: bytes, stop: asyncio.Event, took: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await client.get(key)
        took.append(time.perf_counter() - start)
        await asyncio.sleep(0.02)


# RSS growth allowed while the attack runs. The bundled store's watch budget is 4 MiB per
# connection (backend/kv/watch.py); the rest is slack for the allocator (measured: 65 -> 71 MB,
# probe p99 5 ms; before the budget it passed 1 GB). Real etcd 3.4.23 under this same test:
# 60 -> 198 MB within the 8 s, still growing (issue 11 saw it level off near 267 MB); it has
# no per-client budget, grpc-go queues each stream's responses up to its own limits.
RSS_GROWTH_LIMIT = {"bundled": 64 * MB, "etcd": 512 * MB}
PROBE_P99_LIMIT = 0.25  # seconds


async def test_zero_window_replay_of_10_mb_history_stays_within_budget(
    fresh_store: RunningStore,
) -> None:
    """110 Watch creates replaying 10 MB of history from a client that never reads.

    Before the watch budget, the bundled store built every replay in full, queued it, and went
    from ~70 MB to over 1 GB, stalling every other client while it did.
    """
    client = make_client([fresh_store.url])
    await client.wait_ready()
    prefix = b"/abuse/replay/"
    try:
        await _fill(client, prefix, 10 * MB, 4096)
        await client.put(b"/abuse/probe", b"ok")
        before = _rss(fresh_store)
        attacker = RawWatchClient(fresh_store.url)
        stop = asyncio.Event()
        took: list[float] = []
        probe = asyncio.ensure_future(_probe(client, b"/abuse/probe", stop, took))
        peak = before
        try:
            streams = [attacker.open_watch() for _ in range(10)]
            for i in range(110):
                attacker.create(streams[i % 10], prefix, prefix[:-1] + b"0", 1)
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                peak = max(peak, _rss(fresh_store))
                if peak - before > RSS_GROWTH_LIMIT[fresh_store.kind]:
                    break
        finally:
            stop.set()
            await probe
            attacker.close()
        growth = peak - before
        took.sort()
        p99 = took[int(len(took) * 0.99)] if took else float("inf")
        print(f"{fresh_store.kind}: RSS {before / MB:.0f} MB -> {peak / MB:.0f} MB, "
              f"probe p99 {p99 * 1000:.1f} ms over {len(took)} gets")  # fmt: skip
        assert growth <= RSS_GROWTH_LIMIT[fresh_store.kind], f"grew {growth / MB:.0f} MB"
        if fresh_store.kind == "bundled":
            assert len(took) >= 50, f"only {len(took)} probes answered in 8 s"
            assert p99 <= PROBE_P99_LIMIT, f"probe p99 {p99 * 1000:.0f} ms"
    finally:
        await client.close()


async def test_slow_readers_get_every_event_in_order_within_budget(
    fresh_store: RunningStore,
) -> None:
    """Eight watch streams nobody reads while 24 MB of events happen; then they read it all.

    Before the budget each stream queued every response (8 copies of 24 MB); now a stream
    that falls behind stops getting responses built and catches up from history later.
    """
    client = make_client([fresh_store.url])
    await client.wait_ready()
    prefix = b"/abuse/slow/"
    reader = RawWatchClient(fresh_store.url)
    try:
        await client.put(b"/abuse/warm", b"x")
        start = await client.current_revision() + 1
        streams = [reader.open_watch() for _ in range(8)]
        for stream_id in streams:
            reader.create(stream_id, prefix, prefix[:-1] + b"0", 0)
        reader.read_for(0.5, open_windows=False)  # the created responses
        before = _rss(fresh_store)
        count = await _fill(client, prefix, 24 * MB, 64 * 1024)
        written = 24 * MB
        grown = _rss(fresh_store) - before
        print(f"{fresh_store.kind}: RSS grew {grown / MB:.0f} MB for {written / MB:.0f} MB "
              "written, nobody reading")  # fmt: skip
        if fresh_store.kind == "bundled":
            # The history is in memory, each value three times (its record, its WAL frame
            # kept for snapshots, the Event built once for all watchers): 3x what was
            # written, and the budgets on top. Before them: 283 MB, each stream its own copy.
            assert grown <= written * 3 + 32 * MB, f"grew {grown / MB:.0f} MB"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reader.read_for(0.5)
            if all(len(reader.events(s)) >= count for s in streams):
                break
        for stream_id in streams:
            events = reader.events(stream_id)
            revisions = [e.kv.mod_revision for e in events]
            assert len(events) == count, f"stream {stream_id}: {len(events)} of {count}"
            assert revisions == sorted(set(revisions))
            assert revisions[0] >= start
            assert {e.kv.key for e in events} == {prefix + b"%06d" % i for i in range(count)}
    finally:
        reader.close()
        await client.close()
