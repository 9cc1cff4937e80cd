"""Fixtures and helpers for the store tests: raw gRPC calls, error capture, raw watch streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient


async def rpc_error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message a raw stub call fails with (it must fail)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("the call succeeded")


class RawWatch:
    """One Watch stream driven request by request, for progress, cancel and ID checks."""

    def __init__(self, client: EtcdClient) -> None:
        self._requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
        self.call = rpc.WatchStub(client.channel).Watch(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[rpc.WatchRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def create(self, key: bytes, range_end: bytes = b"", **options: Any) -> rpc.WatchResponse:
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, **options)
        await self._requests.put(rpc.WatchRequest(create_request=create))
        return await self.next()

    async def send(self, request: rpc.WatchRequest) -> None:
        await self._requests.put(request)

    async def next(self) -> rpc.WatchResponse:
        async with asyncio.timeout(5):
            return await self.call.read()

    async def close(self) -> None:
        await self._requests.put(None)
        self.call.cancel()


@pytest.fixture
async def raw_watch(kv: EtcdClient) -> AsyncIterator[RawWatch]:
    await kv.connect()
    watch = RawWatch(kv)
    yield watch
    await watch.close()
