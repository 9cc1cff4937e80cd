"""Pins the HTTP/2 state machine of the bundled store in memory: limits and flow control.

No sockets: bytes go into ``H2Connection``, frames and events come out, and the clock is
whatever the test says, so each limit is checked exactly.
"""

from __future__ import annotations

import struct
import time

import hpack
import pytest

from clustertui.backend.kv.wire_codec import (
    ACK,
    COMPRESSION_ERROR,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from clustertui.backend.kv.wire_conn import (
    BODY,
    DRAINED,
    REQUEST,
    RESET,
    TERMINATED,
    H2Config,
    H2Connection,
)

_HEADER = struct.Struct(">BHBBL")
GRPC_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/etcdserverpb.KV/Range"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        high, low, kind, flags, stream = _HEADER.unpack_from(data, offset)
        length = (high << 16) | low
        out.append((kind, flags, stream, data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return out


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in pairs))


class Client:
    """A client's side, by hand: the state machine under test and what it answered."""

    def __init__(self, config: H2Config | None = None) -> None:
        self.conn = H2Connection(config or H2Config(), 0.0)
        self.encoder = hpack.Encoder()
        self.now = 0.0
        self.first = frames(self.conn.data_to_send())
        self.events = self.send(PREFACE + settings())
        self.first += self.out()  # and the ACK of the client's SETTINGS

    def send(self, data: bytes, max_frames: int = 1 << 30) -> list[tuple]:
        self.conn.receive(data)
        return self.conn.process(self.now, max_frames)

    def open(self, stream: int, end: bool = False, headers: list | None = None) -> list[tuple]:
        block = self.encoder.encode(headers or GRPC_HEADERS)
        flags = END_HEADERS | (END_STREAM if end else 0)
        return self.send(frame(HEADERS, flags, stream, block))

    def out(self) -> list[tuple[int, int, int, bytes]]:
        return frames(self.conn.data_to_send())


def _code(payload: bytes, at: int = 0) -> int:
    return int.from_bytes(payload[at : at + 4], "big")


def test_the_server_advertises_its_stream_and_header_list_limits() -> None:
    client = Client(H2Config(max_concurrent_streams=7, max_header_list_size=4096))
    kind, _, _, payload = client.first[0]
    assert kind == SETTINGS
    advertised = dict(struct.iter_unpack(">HL", payload))
    assert advertised[S_MAX_CONCURRENT_STREAMS] == 7
    assert advertised[S_MAX_HEADER_LIST_SIZE] == 4096


def test_streams_beyond_the_limit_are_refused_and_the_connection_goes_on() -> None:
    client = Client(H2Config(max_concurrent_streams=3))
    for stream in (1, 3, 5):
        assert client.open(stream)[0][0] == REQUEST
    client.out()
    assert client.open(7) == []
    assert [(k, s, _code(p)) for k, _, s, p in client.out()] == [(RST_STREAM, 7, REFUSED_STREAM)]
    # One stream ends (the server answered it, the client half-closed it): room for another.
    stream = client.conn.streams[1]
    client.send(frame(DATA, END_STREAM, 1, b""))
    client.conn.end_stream(stream, b"")
    assert client.open(9)[0][0] == REQUEST
    assert not client.conn.failed


def test_a_settings_frame_full_of_window_sizes_costs_the_same_with_20000_streams_open() -> None:
    client = Client(H2Config(max_concurrent_streams=20_000))
    encode = client.encoder.encode
    opened = [frame(HEADERS, END_HEADERS, 1 + 2 * i, encode(GRPC_HEADERS)) for i in range(20_000)]
    client.send(b"".join(opened))
    assert len(client.conn.streams) == 20_000
    entries = [(S_INITIAL_WINDOW_SIZE, 1000 + i) for i in range(2730)]  # one 16 KB frame
    started = time.process_time()
    for _ in range(3):
        client.send(settings(*entries))
    spent = time.process_time() - started
    # Walking 20,000 streams per entry would take minutes; once per frame, milliseconds.
    assert spent < 0.25, f"3 SETTINGS frames took {spent:.3f} s of CPU"
    stream = client.conn.streams[39_999]
    assert client.conn.window(stream) == 1000 + 2729


def test_streams_behind_the_connection_window_take_turns_as_it_opens() -> None:
    client = Client()
    client.send(settings((S_INITIAL_WINDOW_SIZE, 1 << 20)))
    for stream_id in (1, 3, 5):
        client.open(stream_id, end=True)
    client.out()
    for stream_id in (1, 3, 5):
        client.conn.send_data(client.conn.streams[stream_id], b"x" * 200_000)
    client.out()  # the first 65,535 bytes of the connection's window
    sent = dict.fromkeys((1, 3, 5), 0)
    for _ in range(6):
        client.send(frame(WINDOW_UPDATE, 0, 0, (16_384).to_bytes(4, "big")))
        for kind, _, stream_id, payload in client.out():
            if kind == DATA:
                sent[stream_id] += len(payload)
    assert sent == {1: 32_768, 3: 32_768, 5: 32_768}


def test_a_smaller_initial_window_holds_queued_data_and_a_larger_one_releases_it() -> None:
    client = Client()
    client.open(1, end=True)
    stream = client.conn.streams[1]
    client.send(settings((S_INITIAL_WINDOW_SIZE, 10)))
    client.out()
    assert client.conn.send_data(stream, b"x" * 25) is False
    assert [(k, len(p)) for k, _, _, p in client.out()] == [(DATA, 10)]
    events = client.send(settings((S_INITIAL_WINDOW_SIZE, 100)))
    assert [(k, len(p)) for k, _, _, p in client.out() if k == DATA] == [(DATA, 15)]
    assert (DRAINED, stream) in events
    # Trailers wait behind data the window holds back, then follow it.
    client.send(settings((S_INITIAL_WINDOW_SIZE, 0)))
    client.conn.send_data(stream, b"y" * 5)
    assert client.conn.end_stream(stream, b"") is False
    assert [k for k, *_ in client.out()] == [SETTINGS]
    client.send(frame(WINDOW_UPDATE, 0, 1, (200).to_bytes(4, "big")))
    assert [(k, f & END_STREAM) for k, f, _, _ in client.out()] == [(DATA, 0), (HEADERS, 1)]
    assert 1 not in client.conn.streams


def test_distinct_header_blocks_are_decoded_within_the_connections_budget() -> None:
    config = H2Config(
        max_concurrent_streams=100_000,
        header_fields_per_second=10_000,
        header_fields_burst=5_000,
        header_fields_per_pass=1 << 30,
        max_header_list_size=64 * 1024,
    )
    client = Client(config)
    # Static-table references only (as the attack): :method GET/POST and :scheme, repeated.
    blocks = []
    for i in range(1024):
        refs = bytes([0x82 + (i >> j & 1) for j in range(10)]) * 40
        blocks.append(frame(HEADERS, END_HEADERS, 1 + 2 * i, refs))
    client.conn.receive(b"".join(blocks))
    decoded = 0
    for step in range(10):
        client.now = step * 0.1
        decoded += sum(1 for event in client.conn.process(client.now) if event[0] == REQUEST)
        decoded += len([f for f in client.out() if f[0] == RST_STREAM])
    # 1 s at 10,000 fields/s plus the 5,000 burst: at most ~38 blocks of 400 fields.
    assert 0 < decoded <= 40, decoded
    assert client.conn.resume_at > client.now
    assert client.conn.has_input
    assert not client.conn.failed


def test_one_pass_decodes_a_bounded_number_of_header_fields() -> None:
    config = H2Config(
        max_concurrent_streams=100_000, header_fields_per_pass=1000, max_header_list_size=1 << 16
    )
    client = Client(config)
    blocks = [bytes([0x82 + (i >> j & 1) for j in range(10)]) * 40 for i in range(100)]
    client.conn.receive(
        b"".join(frame(HEADERS, END_HEADERS, 1 + 2 * i, b) for i, b in enumerate(blocks))
    )
    client.conn.process(0.0, 64)
    # 400 fields a block, 384 charged: the pass ends with the block that crosses 1,000.
    assert len(client.out()) == 3
    assert client.conn.has_input


def test_the_decode_cache_is_bounded() -> None:
    client = Client(H2Config(max_concurrent_streams=100_000, header_fields_per_second=1e9))
    decoder = client.conn.decoder
    for i in range(1000):
        block = bytes([0x82 + (i >> j & 1) for j in range(10)]) + bytes([0x86, 0x84])
        client.send(frame(HEADERS, END_HEADERS, 1 + 2 * i, block))
    client.send(frame(HEADERS, END_HEADERS, 2001, b"\x82" * 2000))
    assert len(decoder.cache) <= decoder.CACHE_ENTRIES
    assert all(len(block) <= decoder.CACHE_BLOCK for block in decoder.cache)


def test_a_header_list_beyond_the_advertised_size_ends_the_connection() -> None:
    client = Client(H2Config(max_header_list_size=1024))
    events = client.open(1, headers=[*GRPC_HEADERS, ("x-big", "v" * 2000)])
    assert events[-1][:2] == (TERMINATED, COMPRESSION_ERROR)
    goaway = [p for k, _, _, p in client.out() if k == GOAWAY]
    assert _code(goaway[0], 4) == COMPRESSION_ERROR


def test_one_pass_handles_a_bounded_number_of_frames() -> None:
    client = Client()
    client.conn.receive(frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big")) * 500)
    client.conn.process(0.0, 64)
    assert client.conn.send_window == 65_535 + 64
    assert client.conn.has_input
    for _ in range(10):
        client.conn.process(0.0, 64)
    assert client.conn.send_window == 65_535 + 500
    assert not client.conn.has_input


def _ping(client: Client, at: float) -> list[tuple]:
    client.now = at
    return client.send(frame(PING, 0, 0, b"12345678"))


def test_pings_without_calls_more_than_twice_get_goaway_too_many_pings() -> None:
    client = Client()
    for at in (0.0, 1.0, 2.0):
        assert _ping(client, at) == []
    events = _ping(client, 3.0)
    assert events == [(TERMINATED, ENHANCE_YOUR_CALM, "too_many_pings")]
    goaway = next(p for k, _, _, p in client.out() if k == GOAWAY)
    assert (_code(goaway, 4), goaway[8:]) == (ENHANCE_YOUR_CALM, b"too_many_pings")


def test_pings_during_a_call_are_fine_at_the_minimum_interval_and_after_answers() -> None:
    client = Client(H2Config(ping_min_time=5.0))
    client.open(1)
    stream = client.conn.streams[1]
    for i in range(10):  # every 5 s: within the policy
        assert _ping(client, 5.0 * i) == []
    for i in range(10):  # every 10 ms, but each after the server sent data: BDP pings
        client.conn.send_data(stream, b"x")
        assert _ping(client, 50 + 0.01 * i) == []
    for i in range(4):  # too often, nothing sent between: the first is on time, 3 strikes
        _ping(client, 60 + 0.01 * i)
    assert client.conn.failed
    acks = [f for f in client.out() if f[0] == PING]
    assert all(f[1] == ACK for f in acks)


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "POST"), (":scheme", "http"), (":path", "/x"), ("Content-Type", "a")],
        [(":method", "POST"), (":scheme", "http"), (":path", "")],
        [(":method", "POST"), (":path", "/x")],
        [(":method", "POST"), (":method", "POST"), (":scheme", "http"), (":path", "/x")],
        [(":method", "POST"), (":scheme", "http"), ("a", "b"), (":path", "/x")],
        [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":status", "200")],
        [(":method", "POST"), (":scheme", "http"), (":path", "/x"), ("connection", "close")],
        [(":method", "POST"), (":scheme", "http"), (":path", "/x"), ("te", "gzip")],
    ],
    ids=["upper-case", "empty-path", "no-scheme", "twice", "late-pseudo", "status", "conn", "te"],
)
def test_a_malformed_request_resets_its_stream_only(headers: list[tuple[str, str]]) -> None:
    client = Client()
    assert client.open(1, headers=headers) == []
    assert [(k, s, _code(p)) for k, _, s, p in client.out()] == [(RST_STREAM, 1, PROTOCOL_ERROR)]
    assert client.open(3)[0][0] == REQUEST


def test_a_body_longer_than_its_content_length_resets_the_stream() -> None:
    client = Client()
    client.open(1, headers=[*GRPC_HEADERS, ("content-length", "3")])
    events = client.send(frame(DATA, END_STREAM, 1, b"12345"))
    assert [e[0] for e in events] == [RESET]
    assert [(k, _code(p)) for k, _, _, p in client.out()] == [(RST_STREAM, PROTOCOL_ERROR)]
    client.open(3, headers=[*GRPC_HEADERS, ("content-length", "3")])
    assert [e[0] for e in client.send(frame(DATA, END_STREAM, 3, b"123"))] == [BODY]


def test_data_on_stream_zero_and_a_bad_preface_end_the_connection() -> None:
    client = Client()
    assert client.send(frame(DATA, 0, 0, b"x"))[0][:2] == (TERMINATED, PROTOCOL_ERROR)
    conn = H2Connection(H2Config())
    conn.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert conn.process(0.0)[0][:2] == (TERMINATED, PROTOCOL_ERROR)


def test_the_connection_window_reopens_only_for_bytes_handed_over() -> None:
    config = H2Config(connection_window=100_000, stream_window=80_000)
    client = Client(config)
    client.open(1)
    client.open(3)
    client.out()
    events = client.send(frame(DATA, 0, 1, b"x" * 16_000) * 4)
    assert [e[3] for e in events] == [16_000] * 4
    assert client.out() == []  # held: no WINDOW_UPDATE for the connection
    # Beyond the connection window is an error, however many streams share it.
    assert client.send(frame(DATA, 0, 3, b"y" * 16_000) * 3)[-1][:2] == (
        TERMINATED,
        FLOW_CONTROL_ERROR,
    )
    client = Client(config)
    client.open(1)
    client.out()
    client.send(frame(DATA, 0, 1, b"x" * 16_000) * 4)
    client.conn.acknowledge(64_000)
    updates = [(s, _code(p)) for k, _, s, p in client.out() if k == WINDOW_UPDATE]
    assert updates == [(0, 64_000)]
