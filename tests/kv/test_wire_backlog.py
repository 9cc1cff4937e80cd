"""Pins ``Context.backlog()``: what a call has queued that the client has not taken yet."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import hpack
from aetcd import rpc
from aetcd.rpc import rpc_pb2_grpc as services

from clustertui.backend.kv.wire import Context, WireServer
from clustertui.backend.kv.wire_codec import (
    DATA,
    END_HEADERS,
    HEADERS,
    PREFACE,
    S_INITIAL_WINDOW_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)


class Flooding(services.WatchServicer):
    """Writes 100 KB responses while the client lets them through, noting the backlog."""

    def __init__(self) -> None:
        self.backlogs: list[int] = []
        self.blocked = asyncio.Event()
        self.context: Context | None = None

    async def Watch(self, requests: AsyncIterator[rpc.WatchRequest], context: Context) -> None:
        await requests.__anext__()
        self.context = context
        response = rpc.WatchResponse(watch_id=1, events=[]).SerializeToString() + bytes(100_000)
        for _ in range(3):
            self.backlogs.append(context.backlog())
            if not context.try_write(response):
                await context.write(response)
            self.backlogs.append(context.backlog())
        self.blocked.set()
        await asyncio.sleep(3600)


async def test_backlog_counts_what_flow_control_holds_back_and_falls_when_the_client_reads() -> (
    None
):
    server = WireServer(1 << 20)
    servicer = Flooding()
    server.add(services.add_WatchServicer_to_server, servicer)
    port = await server.listen("127.0.0.1:0")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        block = hpack.Encoder().encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/etcdserverpb.Watch/Watch"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        body = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"k"))
        message = body.SerializeToString()
        writer.write(
            PREFACE
            + frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, 1000))
            + frame(HEADERS, END_HEADERS, 1, block)
            + frame(DATA, 0, 1, struct.pack(">BL", 0, len(message)) + message)
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        # A 1000-byte window: the first response is held back, and the call waits behind it.
        assert servicer.backlogs[0] < 100  # a SETTINGS ACK, perhaps
        assert servicer.backlogs[1] >= 99_000
        assert not servicer.blocked.is_set()
        credit = (400_000).to_bytes(4, "big")
        writer.write(frame(WINDOW_UPDATE, 0, 1, credit) + frame(WINDOW_UPDATE, 0, 0, credit))
        await writer.drain()
        async with asyncio.timeout(5):
            await servicer.blocked.wait()
            received = 0
            while received < 300_000:
                received += len(await reader.read(65536))
        await asyncio.sleep(0.2)
        assert servicer.backlogs[-1] >= 99_000  # queued in the transport, not yet sent
        assert servicer.context is not None
        assert servicer.context.backlog() < 1000  # the client read it all
    finally:
        writer.close()
        await server.stop(0.5)
