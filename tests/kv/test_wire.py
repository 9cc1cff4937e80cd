"""Pins the store's HTTP/2 and gRPC layer against real peers: flow control, concurrency, errors.

Real clients (aetcd, raw grpc.aio channels, Go's etcdctl) and a raw socket speaking HTTP/2 by
hand run against real etcd and the bundled store alike, and expect the same outcome of both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hpack
import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.keys import prefix_end
from clustertui.backend.kv.wire_codec import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from tests.harness.bundled import start_bundled
from tests.harness.etcd import EtcdMember
from tests.harness.stores import RunningStore
from tests.kv.conftest import RawWatch, rpc_error
from tests.kv.tools import etcdctl

CANCEL = 8
_HEADER = struct.Struct(">BHBBL")


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


@dataclass
class Response:
    """One call's answer as seen on the wire: its headers, its body bytes, its trailers."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)

    def messages(self) -> list[bytes]:
        out, offset = [], 0
        while offset < len(self.body):
            compressed, size = struct.unpack_from(">BL", self.body, offset)
            assert not compressed
            out.append(bytes(self.body[offset + 5 : offset + 5 + size]))
            offset += 5 + size
        return out


class RawH2:
    """A client speaking HTTP/2 by hand over one TCP connection, for what clients never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.answers: dict[int, Response] = {}
        self.ended: set[int] = set()

    @classmethod
    async def connect(cls, url: str) -> RawH2:
        host, _, port = url.split("//", 1)[1].rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def request_headers(self, path: str) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )

    def call(self, stream: int, path: str, request: bytes) -> None:
        """Sends a whole unary request on ``stream``."""
        self.send(
            frame(HEADERS, END_HEADERS, stream, self.request_headers(path))
            + frame(DATA, END_STREAM, stream, struct.pack(">BL", 0, len(request)) + request)
        )

    async def next_frame(self) -> Frame | None:
        """The next frame the server sends, or None at end of connection."""
        try:
            head = await self.reader.readexactly(9)
            high, low, kind, flags, stream = _HEADER.unpack(head)
            payload = await self.reader.readexactly((high << 16) | low)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        return Frame(kind, flags, stream & 0x7FFFFFFF, payload)

    async def response(self, stream: int, reopen_windows: bool = False) -> Response:
        """Reads frames until ``stream`` ends, keeping every stream's answer on the way.

        ``reopen_windows`` gives back each DATA frame's flow-control credit, as a client that
        reads its data does; without it the windows only shrink.
        """
        async with asyncio.timeout(5):
            while stream not in self.ended:
                got = await self.next_frame()
                if got is None:
                    raise AssertionError("the connection ended before the response")
                answer = self.answers.setdefault(got.stream, Response())
                if got.kind == HEADERS:
                    answer.headers.update(self.decoder.decode(got.payload, raw=True))
                elif got.kind == DATA:
                    answer.body += got.payload
                    if reopen_windows and got.payload:
                        credit = len(got.payload).to_bytes(4, "big")
                        self.send(
                            frame(WINDOW_UPDATE, 0, 0, credit)
                            + frame(WINDOW_UPDATE, 0, got.stream, credit)
                        )
                elif got.kind == RST_STREAM and got.stream == stream:
                    raise AssertionError(f"stream {stream} reset: {got.payload.hex()}")
                if got.flags & END_STREAM and got.kind in (HEADERS, DATA):
                    self.ended.add(got.stream)
        return self.answers[stream]

    async def until_closed(self) -> list[Frame]:
        """Every frame the server sends until it closes the connection (it must, within 5 s)."""
        frames = []
        async with asyncio.timeout(5):
            while (got := await self.next_frame()) is not None:
                frames.append(got)
        return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


HELLO = PREFACE + frame(SETTINGS, 0, 0)
"""What a client sends first: the preface and its (here empty) SETTINGS."""


def _goaway_codes(frames: list[Frame]) -> list[int]:
    return [int.from_bytes(f.payload[4:8], "big") for f in frames if f.kind == GOAWAY]


def _target(url: str) -> str:
    return url.split("//", 1)[1]


def _range(answer: Response) -> rpc.RangeResponse:
    (message,) = answer.messages()
    return rpc.RangeResponse.FromString(message)


RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"


# -- flow control: responses and requests larger than HTTP/2's default windows


async def test_a_range_far_larger_than_the_flow_control_window_arrives_whole_and_in_order(
    kv: EtcdClient, ns: bytes
) -> None:
    values = {ns + b"%02d" % i: bytes([65 + i % 26]) * 100_000 for i in range(40)}
    await asyncio.gather(*(kv.put(key, value) for key, value in values.items()))
    answer = await kv.kvstub.Range(rpc.RangeRequest(key=ns, range_end=prefix_end(ns)))
    assert [(item.key, item.value) for item in answer.kvs] == sorted(values.items())


async def test_etcdctl_reads_a_range_far_larger_than_the_flow_control_window(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    values = {ns + b"%02d" % i: bytes([97 + i % 26]) * 100_000 for i in range(40)}
    await asyncio.gather(*(kv.put(key, value) for key, value in values.items()))
    done = await asyncio.to_thread(etcdctl, store.url, "get", "--prefix", ns.decode(), "-w", "json")
    assert done.rc == 0, done.err
    kvs = json.loads(done.out)["kvs"]
    got = [(base64.b64decode(item["key"]), base64.b64decode(item["value"])) for item in kvs]
    assert got == sorted(values.items())


async def test_a_value_near_the_request_limit_round_trips_intact(kv: EtcdClient, ns: bytes) -> None:
    value = bytes(range(256)) * (1400 * 1024 // 256)
    await kv.kvstub.Put(rpc.PutRequest(key=ns + b"big", value=value))
    answer = await kv.kvstub.Range(rpc.RangeRequest(key=ns + b"big"))
    assert [item.value for item in answer.kvs] == [value]


async def test_many_calls_at_once_on_one_connection_each_get_their_own_answer(
    kv: EtcdClient, ns: bytes
) -> None:
    keys = [ns + b"%03d" % i for i in range(250)]
    puts = await asyncio.gather(
        *(kv.kvstub.Put(rpc.PutRequest(key=key, value=key[-3:] * 10)) for key in keys)
    )
    assert len({put.header.revision for put in puts}) == len(keys)
    more = [ns + b"m%03d" % i for i in range(250)]
    answers = await asyncio.gather(
        *(kv.kvstub.Range(rpc.RangeRequest(key=key)) for key in keys),
        *(kv.kvstub.Put(rpc.PutRequest(key=key, value=key)) for key in more),
    )
    assert [[item.value for item in got.kvs] for got in answers[: len(keys)]] == [
        [key[-3:] * 10] for key in keys
    ]
    every = await kv.kvstub.Range(rpc.RangeRequest(key=ns, range_end=prefix_end(ns)))
    assert every.count == len(keys) + len(more)


async def test_a_stream_out_of_flow_control_credit_does_not_hold_up_the_others(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    await kv.put(ns + b"big", b"b" * 100_000)
    await kv.put(ns + b"small", b"s")
    conn = await RawH2.connect(store.url)
    try:
        conn.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, 1024)))
        conn.call(1, RANGE, rpc.RangeRequest(key=ns + b"big").SerializeToString())
        conn.call(3, RANGE, rpc.RangeRequest(key=ns + b"small").SerializeToString())
        small = await conn.response(3)
        assert small.headers[b"grpc-status"] == b"0"
        assert [kv.value for kv in _range(small).kvs] == [b"s"]
        assert len(conn.answers.get(1, Response()).body) <= 1024
        credit = (200_000).to_bytes(4, "big")
        conn.send(frame(WINDOW_UPDATE, 0, 0, credit) + frame(WINDOW_UPDATE, 0, 1, credit))
        big = await conn.response(1)
        assert [kv.value for kv in _range(big).kvs] == [b"b" * 100_000]
    finally:
        await conn.close()


async def test_a_call_running_when_the_client_sends_goaway_still_gets_its_window_and_ends(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    await kv.put(ns + b"big", b"g" * 100_000)
    conn = await RawH2.connect(store.url)
    try:
        conn.send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, 1024)))
        conn.call(1, RANGE, rpc.RangeRequest(key=ns + b"big").SerializeToString())
        # The client opens no more streams, but still reads the one it has: GOAWAY says no
        # more than that, so the WINDOW_UPDATEs that follow must be heeded.
        conn.send(frame(GOAWAY, 0, 0, bytes(8)))
        big = await conn.response(1, reopen_windows=True)
        assert big.headers[b"grpc-status"] == b"0"
        assert [kv.value for kv in _range(big).kvs] == [b"g" * 100_000]
    finally:
        await conn.close()


async def test_a_request_split_over_continuation_with_padding_and_priority_is_understood(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    await kv.put(ns + b"k", b"v")
    conn = await RawH2.connect(store.url)
    try:
        block = conn.request_headers(RANGE)
        pad = 7
        # HEADERS: pad length, priority (dependency 0, weight 15), the block's first part, pad.
        first = bytes([pad]) + bytes(4) + b"\x0f" + block[:5] + bytes(pad)
        message = rpc.RangeRequest(key=ns + b"k").SerializeToString()
        body = struct.pack(">BL", 0, len(message)) + message
        conn.send(
            HELLO
            + frame(HEADERS, PADDED | PRIORITY_FLAG, 1, first)
            + frame(CONTINUATION, 0, 1, block[5:9])
            + frame(CONTINUATION, END_HEADERS, 1, block[9:])
            + frame(DATA, PADDED, 1, bytes([3]) + body[:4] + bytes(3))
            + frame(DATA, END_STREAM, 1, body[4:])
        )
        answer = await conn.response(1)
        assert answer.headers[b"grpc-status"] == b"0"
        assert [item.value for item in _range(answer).kvs] == [b"v"]
    finally:
        await conn.close()


# -- calls the store does not serve


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (
            "/etcdserverpb.KV/Nope",
            (grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope for service etcdserverpb.KV"),
        ),
        (
            "/etcdserverpb.Nope/Range",
            (grpc.StatusCode.UNIMPLEMENTED, "unknown service etcdserverpb.Nope"),
        ),
        ("/x", (grpc.StatusCode.RESOURCE_EXHAUSTED, 'malformed method name: "/x"')),
    ],
)
async def test_a_call_the_store_does_not_serve_gets_etcds_status_and_the_connection_goes_on(
    kv: EtcdClient, store: RunningStore, ns: bytes, path: str, status: tuple[grpc.StatusCode, str]
) -> None:
    await kv.put(ns + b"k", b"v")
    async with grpc.aio.insecure_channel(_target(store.url)) as channel:
        nope = channel.unary_unary(
            path,
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        assert await rpc_error(nope(b"")) == status
        answer = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=ns + b"k"))
        assert [item.value for item in answer.kvs] == [b"v"]


async def test_a_gzip_compressed_request_is_refused_as_etcd_refuses_it(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    target = _target(store.url)
    async with grpc.aio.insecure_channel(target, compression=grpc.Compression.Gzip) as channel:
        put = rpc.KVStub(channel).Put(rpc.PutRequest(key=ns + b"gz", value=b"z" * 1000))
        assert await rpc_error(put) == (
            grpc.StatusCode.UNIMPLEMENTED,
            'grpc: Decompressor is not installed for grpc-encoding "gzip"',
        )
    assert await kv.get(ns + b"gz") is None
    await kv.put(ns + b"plain", b"p")
    got = await kv.get(ns + b"plain")
    assert got is not None and got.value == b"p"


# -- keepalive


async def test_a_ping_is_answered_with_an_ack_carrying_its_own_payload(
    store: RunningStore,
) -> None:
    # grpc core sends one keepalive ping at a time and waits for its ack: a server that never
    # acks silently stops keepalive instead of failing the channel, so ask on the wire.
    conn = await RawH2.connect(store.url)
    try:
        conn.send(HELLO + frame(PING, 0, 0, b"wire-ok!"))
        async with asyncio.timeout(5):
            while (got := await conn.next_frame()) is not None:
                if got.kind == PING and got.flags & ACK:
                    break
        assert got is not None and (got.stream, got.payload) == (0, b"wire-ok!")
    finally:
        await conn.close()


@pytest.fixture(params=["etcd", "bundled"])
def ping_tolerant_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    """Each store, permitting a keepalive ping every 100 ms.

    Both by default allow one ping per 5 s (--grpc-keepalive-min-time) and answer more with
    GOAWAY "too_many_pings".
    """
    if request.param == "etcd":
        member = EtcdMember(
            name="etcd0",
            data_dir=tmp_path / "etcd0",
            extra=["--grpc-keepalive-min-time", "100ms"],
        )
        running: RunningStore = member.start().wait_ready()
    else:
        running = start_bundled(tmp_path, extra=["--grpc-keepalive-min-time", "100ms"])
    yield running
    running.stop()


async def test_an_idle_watch_under_aggressive_keepalive_pings_still_gets_a_later_event(
    ping_tolerant_store: RunningStore,
) -> None:
    options = [
        ("grpc.keepalive_time_ms", 200),
        # An unanswered ping ends the channel within the test, not after the default 20 s.
        ("grpc.keepalive_timeout_ms", 500),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    target = _target(ping_tolerant_store.url)
    requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[rpc.WatchRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = rpc.WatchStub(channel).Watch(outgoing())
        await requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"ka")))
        async with asyncio.timeout(5):
            assert (await call.read()).created
        # Idle: only keepalive pings cross the connection (grpc core sends one a second at
        # most, so etcd's default policy would already have sent GOAWAY by now).
        await asyncio.sleep(2.5)
        async with grpc.aio.insecure_channel(target) as other:
            put = await rpc.KVStub(other).Put(rpc.PutRequest(key=b"ka", value=b"later"))
        async with asyncio.timeout(5):
            event = await call.read()
        assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in event.events] == [
            (b"ka", b"later", put.header.revision)
        ]
        await requests.put(None)
        call.cancel()


# -- bad input on the raw connection


def _oversized_frame(conn: RawH2) -> bytes:
    opened = frame(HEADERS, END_HEADERS, 1, conn.request_headers(PUT))
    return HELLO + opened + frame(DATA, 0, 1, bytes(16_385))


BAD_INPUT = [
    # (what is sent, GOAWAY code the bundled store sends, whether etcd closes too)
    # Not HTTP/2 is HTTP/1.1 to both (one port, two protocols): a request without Host gets
    # 400 and the connection ends, with no GOAWAY.
    pytest.param(lambda conn: b"GET / HTTP/1.1\r\n\r\n", None, True, id="not HTTP/2"),
    pytest.param(_oversized_frame, FRAME_SIZE_ERROR, True, id="a frame over 16384 bytes"),
    # etcd (grpc-go) drops DATA on a stream it does not know, where RFC 9113 asks for a
    # connection error: the connection only ends on the bundled store.
    pytest.param(
        lambda conn: HELLO + frame(DATA, END_STREAM, 1, bytes(5)),
        PROTOCOL_ERROR,
        False,
        id="DATA on a stream never opened",
    ),
    # So does a RST_STREAM on a stream never opened (grpc-go ignores it).
    pytest.param(
        lambda conn: HELLO + frame(RST_STREAM, 0, 5, CANCEL.to_bytes(4, "big")),
        PROTOCOL_ERROR,
        False,
        id="RST_STREAM on a stream never opened",
    ),
    pytest.param(
        lambda conn: HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff" * 8),
        COMPRESSION_ERROR,
        True,
        id="HEADERS that are not HPACK",
    ),
    pytest.param(
        lambda conn: (
            HELLO + frame(HEADERS, 0, 1, conn.request_headers(PUT)) + frame(PING, 0, 0, bytes(8))
        ),
        PROTOCOL_ERROR,
        True,
        id="a frame between HEADERS and its CONTINUATION",
    ),
]


@pytest.mark.parametrize(("attack", "goaway", "etcd_closes"), BAD_INPUT)
async def test_bad_input_on_the_wire_ends_that_connection_only_and_loses_nothing(
    kv: EtcdClient,
    store: RunningStore,
    ns: bytes,
    attack: Callable[[RawH2], bytes],
    goaway: int | None,
    etcd_closes: bool,
) -> None:
    await kv.put(ns + b"kept", b"before")
    conn = await RawH2.connect(store.url)
    try:
        conn.send(attack(conn))
        if store.kind == "bundled" and goaway is not None:
            assert _goaway_codes(await conn.until_closed()) == [goaway]
        elif etcd_closes:
            await conn.until_closed()
    finally:
        await conn.close()
    got = await kv.get(ns + b"kept")
    assert got is not None and got.value == b"before"
    await kv.put(ns + b"after", b"a")
    assert [item.value for item in await kv.get_prefix(ns)] == [b"a", b"before"]


async def test_a_unary_call_reset_before_its_answer_leaves_the_connection_working(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    await kv.put(ns + b"kept", b"v")
    conn = await RawH2.connect(store.url)
    try:
        conn.send(HELLO)
        conn.call(1, PUT, rpc.PutRequest(key=ns + b"reset", value=b"r").SerializeToString())
        conn.send(frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")))
        conn.call(3, RANGE, rpc.RangeRequest(key=ns + b"kept").SerializeToString())
        answer = await conn.response(3)
        assert answer.headers[b"grpc-status"] == b"0"
        assert [item.value for item in _range(answer).kvs] == [b"v"]
    finally:
        await conn.close()
    got = await kv.get(ns + b"kept")
    assert got is not None and got.value == b"v"


# -- streams the client abandons


async def test_a_watch_cancelled_mid_stream_leaves_the_server_and_other_watches_serving(
    kv: EtcdClient, ns: bytes
) -> None:
    await kv.connect()
    doomed = RawWatch(kv)
    other = RawWatch(kv)
    try:
        await doomed.create(ns + b"flood/", prefix_end(ns + b"flood/"))
        await other.create(ns + b"after")
        # Enough event bytes that the server is still sending when the client cancels.
        await asyncio.gather(*(kv.put(ns + b"flood/%02d" % i, b"f" * 50_000) for i in range(40)))
        assert (await doomed.next()).events
        doomed.call.cancel()
        put = await kv.put(ns + b"after", b"a")
        event = await other.next()
        assert [(e.kv.key, e.kv.mod_revision) for e in event.events] == [
            (ns + b"after", put.header.revision)
        ]
        assert len(list(await kv.get_prefix(ns + b"flood/"))) == 40
    finally:
        await doomed.close()
        await other.close()


async def test_a_unary_answer_ends_with_its_trailers_and_no_reset(
    kv: EtcdClient, store: RunningStore, ns: bytes
) -> None:
    await kv.put(ns + b"k", b"v")
    conn = await RawH2.connect(store.url)
    try:
        conn.send(HELLO)
        conn.call(1, RANGE, rpc.RangeRequest(key=ns + b"k").SerializeToString())
        seen: list[Frame] = []
        pinged = False
        async with asyncio.timeout(5):
            # Once the call has ended, a PING's ACK marks the point by which a reset sent
            # with the answer would have arrived.
            while not (pinged and seen[-1].kind == PING and seen[-1].flags & ACK):
                got = await conn.next_frame()
                assert got is not None, "the connection ended"
                seen.append(got)
                if got.stream == 1 and got.flags & END_STREAM and not pinged:
                    conn.send(frame(PING, 0, 0, b"sentinel"))
                    pinged = True
        on_stream = [(f.kind, f.flags & END_STREAM) for f in seen if f.stream == 1]
        assert on_stream[-1] == (HEADERS, END_STREAM)  # the trailers end the call
        assert RST_STREAM not in [kind for kind, _end in on_stream]
    finally:
        await conn.close()
