"""Pins how a servicer's failure ends its call alone: the status, and the calls beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from aetcd import rpc
from aetcd.rpc import rpc_pb2_grpc as services

from clustertui.backend.kv.wire import Context, WireServer
from tests.kv.conftest import rpc_error


class Faulty(services.KVServicer):
    """Range fails in the handler; Put is left as grpc generates it (not implemented); a
    DeleteRange that is not a coroutine function; Txn answers with the wrong type."""

    async def Range(self, request: rpc.RangeRequest, context: Context) -> rpc.RangeResponse:
        raise RuntimeError("boom")

    def DeleteRange(self, request: rpc.DeleteRangeRequest, context: Context) -> None:  # type: ignore[override]
        return None

    async def Txn(self, request: rpc.TxnRequest, context: Context) -> object:
        return object()


class Watching(services.WatchServicer):
    async def Watch(self, requests: AsyncIterator[rpc.WatchRequest], context: Context) -> None:
        async for _ in requests:
            await context.write(rpc.WatchResponse(created=True))


async def test_a_failing_handler_ends_its_own_call_with_a_status_and_nothing_else() -> None:
    server = WireServer(1 << 20)
    server.add(services.add_KVServicer_to_server, Faulty())
    server.add(services.add_WatchServicer_to_server, Watching())
    port = await server.listen("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()

            async def outgoing() -> AsyncIterator[rpc.WatchRequest]:
                while (request := await requests.get()) is not None:
                    yield request

            watch = rpc.WatchStub(channel).Watch(outgoing())
            await requests.put(rpc.WatchRequest())
            async with asyncio.timeout(5):
                assert (await watch.read()).created
            kv = rpc.KVStub(channel)
            code, message = await rpc_error(kv.Range(rpc.RangeRequest(key=b"k")))
            assert (code, message) == (grpc.StatusCode.UNKNOWN, "Unexpected RuntimeError: boom")
            code, message = await rpc_error(kv.Put(rpc.PutRequest(key=b"k")))
            assert code == grpc.StatusCode.UNIMPLEMENTED, message
            code, _ = await rpc_error(kv.DeleteRange(rpc.DeleteRangeRequest(key=b"k")))
            assert code == grpc.StatusCode.UNKNOWN
            code, _ = await rpc_error(kv.Txn(rpc.TxnRequest()))
            assert code == grpc.StatusCode.UNKNOWN
            # The watch on the same connection never noticed.
            await requests.put(rpc.WatchRequest())
            async with asyncio.timeout(5):
                assert (await watch.read()).created
            await requests.put(None)
            watch.cancel()
    finally:
        await server.stop(0.5)
