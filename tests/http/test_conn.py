"""The HTTP/1.1 connection and the sniffer in-process, with raw sockets: limits, keep-alive,
pipelining, and gRPC on the same listener."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.kv import wire
from clustertui.backend.kv.apply import Config, Store
from clustertui.backend.kv.http.app import HTTPApp
from clustertui.backend.kv.http.conn import HTTPLimits
from clustertui.backend.kv.http.sniff import HTTPSide, Sniffer
from clustertui.backend.kv.server import KVServer


class Served:
    def __init__(self, store: Store, side: HTTPSide, port: int) -> None:
        self.store = store
        self.side = side
        self.port = port

    async def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Sends ``data`` and reads until the server closes (or ``timeout``)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        out = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    out += chunk
        except TimeoutError:
            pass
        writer.close()
        return out


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = Store(Config(data_dir=tmp_path / "kv", name="default"))
    store.recover()
    grpc_side = KVServer(store, [])
    await grpc_side.start()
    limits = HTTPLimits(
        max_header_bytes=8192, max_body_bytes=4096, idle_timeout=0.5, header_timeout=0.5,
        max_connections=4,
    )  # fmt: skip
    side = HTTPSide(HTTPApp(store), limits)
    loop = asyncio.get_running_loop()
    assert grpc_side.server is not None
    wire_server = grpc_side.server
    server = await loop.create_server(
        lambda: Sniffer(lambda: wire.Connection(wire_server), side), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    yield Served(store, side, port)
    side.close()
    server.close()
    await grpc_side.stop()


def _status(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


async def test_health_and_keep_alive_pipelined(served: Served) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await served.exchange(request * 3 + b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == [200, 200, 200, 200]
    assert answer.count(b'{"health":"true"}') == 3
    assert b'"etcdcluster":"3.4.0"' in answer


async def test_idle_connection_closed(served: Served) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await served.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert _status(answer) == [200]
    assert loop.time() - started < 3  # closed by the 0.5 s idle timeout, not our 5 s


async def test_slow_headers_closed(served: Served) -> None:
    answer = await served.exchange(b"GET /health HTTP/1.1\r\nHo", timeout=5)
    assert answer == b""
    assert not served.side.connections


async def test_header_too_large_431(served: Served) -> None:
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer = await served.exchange(huge)
    assert _status(answer) == [431]


async def test_body_too_large_413(served: Served) -> None:
    body = b"{" + b" " * 5000 + b"}"
    head = f"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = await served.exchange(head.encode() + body)
    assert _status(answer) == [413]
    chunked = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    assert _status(await served.exchange(chunked)) == [413]


async def test_garbage_closed_and_missing_host_400(served: Served) -> None:
    assert await served.exchange(b"\x16\x03\x01 not http at all\r\n\r\n") == b""
    assert _status(await served.exchange(b"GET /health HTTP/1.1\r\n\r\n")) == [400]


async def test_connection_count_bounded(served: Served) -> None:
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(4)]
    for _, writer in held:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers unfinished: held open
    await asyncio.sleep(0.1)
    assert len(served.side.connections) == 4
    answer = await served.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
    assert answer == b""  # the fifth is closed at once
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.6)
    assert _status(await served.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]


async def test_grpc_and_http_share_the_listener(served: Served) -> None:
    client = make_client([f"http://127.0.0.1:{served.port}"])
    await client.wait_ready()
    try:
        await client.put(b"/shared", b"both")
        body = json.dumps({"key": "L3NoYXJlZA=="}).encode()
        head = f"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        answer = await served.exchange(head.encode() + b"Connection: close\r\n\r\n" + body)
        assert _status(answer) == [200]
        found = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert found["kvs"][0]["value"] == "Ym90aA=="
        assert (await client.get(b"/shared")).value == b"both"
    finally:
        await client.close()


async def test_pipelined_flood_behind_a_waiting_request_is_bounded(served: Served) -> None:
    """A v2 wait holds the connection; 4 MB pipelined behind it is not all read into memory."""
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /v2/keys/flood?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.2)
    flood = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * ((4 << 20) // 34)
    writer.write(flood)
    await asyncio.sleep(0.5)
    (conn,) = served.side.connections
    held = len(conn.h11.trailing_data[0])
    limit = served.side.limits.max_header_bytes + served.side.limits.max_body_bytes
    assert conn.reading_paused
    assert held <= limit + 1024 * 1024, held  # plus at most what one read brings
    writer.close()


async def test_a_client_leaving_a_wait_or_watch_leaves_no_watcher(served: Served) -> None:
    store = served.store
    waits = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
    for index, (_, writer) in enumerate(waits):
        if index == 2:
            body = b'{"create_request":{"key":"L3c="}}'
            head = f"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
        else:
            writer.write(b"GET /v2/keys/w?wait=true&recursive=true HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    assert len(store.hub) == 3
    assert served.side.app.v2.stats["watchers"] == 2
    for _, writer in waits:
        writer.close()
    await asyncio.sleep(0.3)
    assert len(store.hub) == 0
    assert served.side.app.v2.stats["watchers"] == 0
    assert not served.side.connections
