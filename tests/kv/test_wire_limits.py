"""Pins the wire layer's limits through its flags, against real clients and raw HTTP/2."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.kv.wire_codec import (
    END_HEADERS,
    HEADERS,
    PING,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    S_MAX_CONCURRENT_STREAMS,
    SETTINGS,
    frame,
)
from tests.harness.bundled import BundledStore, start_bundled
from tests.harness.etcd import EtcdMember
from tests.harness.procs import REPO
from tests.harness.stores import RunningStore

_HEADER = struct.Struct(">BHBBL")
REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/etcdserverpb.KV/Range"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def _connect(url: str) -> socket.socket:
    host, _, port = url.split("//", 1)[1].rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return sock


def _frames(sock: socket.socket, until: float) -> Iterator[tuple[int, int, int, bytes]]:
    """The server's frames as they come, until it closes or ``until`` (monotonic) passes."""
    buffer = bytearray()
    while time.monotonic() < until:
        sock.settimeout(max(0.05, until - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            yield (-1, 0, 0, b"")  # closed
            return
        buffer += chunk
        while len(buffer) >= 9:
            high, low, kind, flags, stream = _HEADER.unpack_from(buffer)
            end = 9 + ((high << 16) | low)
            if len(buffer) < end:
                break
            yield (kind, flags, stream, bytes(buffer[9:end]))
            del buffer[:end]


def test_the_stream_limit_is_advertised_and_excess_streams_are_refused_alone(
    tmp_path: Path,
) -> None:
    store = start_bundled(tmp_path, extra=["--max-concurrent-streams", "3"])
    try:
        sock = _connect(store.url)
        encoder = hpack.Encoder()
        # Four calls whose requests never come: three stay open, the fourth is refused.
        sock.sendall(
            b"".join(frame(HEADERS, END_HEADERS, s, encoder.encode(REQUEST)) for s in (1, 3, 5, 7))
        )
        advertised, refused = None, []
        for kind, _, stream, payload in _frames(sock, time.monotonic() + 2):
            if kind == SETTINGS and payload:
                advertised = dict(struct.iter_unpack(">HL", payload)).get(S_MAX_CONCURRENT_STREAMS)
            if kind == RST_STREAM:
                refused.append((stream, int.from_bytes(payload, "big")))
            assert kind != -1, "the connection was closed"
        assert advertised == 3
        assert refused == [(7, REFUSED_STREAM)]
        sock.close()
    finally:
        store.stop()


async def test_a_client_with_many_calls_at_once_waits_for_the_stream_limit_and_gets_all(
    tmp_path: Path,
) -> None:
    store = start_bundled(tmp_path, extra=["--max-concurrent-streams", "2"])
    client = make_client([store.url])
    try:
        await client.wait_ready()
        await asyncio.gather(*(client.put(b"k%d" % i, b"v%d" % i) for i in range(50)))
        got = await asyncio.gather(*(client.get(b"k%d" % i) for i in range(50)))
        assert [g.value for g in got] == [b"v%d" % i for i in range(50)]
    finally:
        await client.close()
        store.stop()


@pytest.fixture(params=["bundled", "etcd"])
def eager_keepalive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    """Each store pinging a silent connection after 1 s and closing it 1 s later."""
    flags = ["--grpc-keepalive-interval", "1s", "--grpc-keepalive-timeout", "1s"]
    if request.param == "etcd":
        running: RunningStore = (
            EtcdMember(name="etcd0", data_dir=tmp_path / "etcd0", extra=flags).start().wait_ready()
        )
    else:
        running = start_bundled(tmp_path, extra=flags)
    yield running
    running.stop()


def test_a_silent_connection_is_pinged_then_closed_by_the_keepalive_flags(
    eager_keepalive: RunningStore,
) -> None:
    sock = _connect(eager_keepalive.url)
    started = time.monotonic()
    pinged = closed = None
    for kind, flags, _, _ in _frames(sock, started + 8):
        if kind == PING and not flags & 1 and pinged is None:
            pinged = time.monotonic() - started
        if kind == -1:
            closed = time.monotonic() - started
    sock.close()
    assert pinged is not None and 0.5 < pinged < 4, pinged
    assert closed is not None and pinged < closed < 7, closed


def test_the_store_raises_its_open_file_soft_limit_to_the_hard_limit(tmp_path: Path) -> None:
    store = BundledStore(data_dir=tmp_path / "kv")
    argv = ["prlimit", "--nofile=1024:4096", "--", *store.argv()]
    store.argv = lambda: argv  # type: ignore[method-assign]
    store.start()
    try:
        limits = Path(f"/proc/{store.child.pid}/limits").read_text()  # type: ignore[union-attr]
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        store.stop()


def test_the_limit_flags_are_checked(tmp_path: Path) -> None:
    for flags in (["--max-concurrent-streams", "0"], ["--grpc-keepalive-min-time", "soon"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "clustertui.backend.daemon",
                "kv",
                "--data-dir",
                str(tmp_path),
                *flags,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode != 0 and "clusterd kv:" in done.stderr, done.stderr


@pytest.fixture(params=["bundled", "etcd"])
def strict_pings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    """Each store with a keepalive minimum of 1 s: the project's client's 10 s against 5 s,
    scaled down."""
    flags = ["--grpc-keepalive-min-time", "1s"]
    if request.param == "etcd":
        running: RunningStore = (
            EtcdMember(name="etcd0", data_dir=tmp_path / "etcd0", extra=flags).start().wait_ready()
        )
    else:
        running = start_bundled(tmp_path, extra=flags)
    yield running
    running.stop()


@pytest.mark.slow
async def test_the_project_clients_keepalive_on_an_idle_watch_is_never_taken_for_abuse(
    strict_pings: RunningStore,
) -> None:
    """backend/etcd.py's keepalive options with their time scaled from 10 s to 2 s: pings
    while a watch is open, none while idle; the watch lives through them and gets its event."""
    from aetcd import rpc

    from clustertui.backend.etcd import _KEEPALIVE

    options = {**_KEEPALIVE, "grpc.keepalive_time_ms": 2000, "grpc.keepalive_timeout_ms": 1000}
    options.pop("grpc.service_config")
    target = strict_pings.url.split("//", 1)[1]
    requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()

    async def outgoing():  # type: ignore[no-untyped-def]
        while (request := await requests.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(target, options=list(options.items())) as channel:
        call = rpc.WatchStub(channel).Watch(outgoing())
        await requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"ka")))
        async with asyncio.timeout(5):
            assert (await call.read()).created
        await asyncio.sleep(7)  # three or four keepalive pings, nothing else
        await rpc.KVStub(channel).Put(rpc.PutRequest(key=b"ka", value=b"later"))
        async with asyncio.timeout(5):
            event = await call.read()
        assert [(e.kv.key, e.kv.value) for e in event.events] == [(b"ka", b"later")]
        await requests.put(None)
        call.cancel()
        await asyncio.sleep(3)  # idle: no pings, no GOAWAY
        async with asyncio.timeout(5):
            await rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"ka"))
        assert channel.get_state() == grpc.ChannelConnectivity.READY
