"""Provides the gRPC servicers of etcd's v3 API over the store, and the server that runs them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from aetcd import rpc
from aetcd.rpc import rpc_pb2_grpc as services

from clustertui.backend.kv import errors
from clustertui.backend.kv.apply import GRPC_OVERHEAD_BYTES, Store
from clustertui.backend.kv.errors import StoreError
from clustertui.backend.kv.http.app import HTTPApp
from clustertui.backend.kv.http.conn import HTTPLimits
from clustertui.backend.kv.http.metrics import StoreMetrics
from clustertui.backend.kv.http.sniff import HTTPSide, attach
from clustertui.backend.kv.watch import Budget, WatchStream
from clustertui.backend.kv.wire import Context, Limits, WireServer, server_ssl_context

log = logging.getLogger("clusterd.kv")

SNAPSHOT_CHUNK = 32 * 1024
API_VERSION = "3.4.0"
"""The etcd API level this store speaks, reported by Status."""

_Context = Context
_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def answers_store_errors(
    method: Callable[[_Servicer, _Request, _Context], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, _Context], Coroutine[Any, Any, _Response]]:
    """A unary call whose store raises a ``StoreError`` ends with etcd's status and message."""

    @functools.wraps(method)
    async def call(self: _Servicer, request: _Request, context: _Context) -> _Response:
        try:
            return await method(self, request, context)
        except StoreError as error:
            await context.abort(error.code, error.message)
            raise AssertionError("abort() raises") from None

    return call


async def _durable(store: Store, context: _Context) -> None:
    try:
        await store.durable()
    except OSError as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"clusterd kv: WAL write failed: {error}")


class KVService(services.KVServicer):  # type: ignore[misc]  # aetcd has no type hints
    """Range, Put, DeleteRange, Txn and Compact."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @answers_store_errors
    async def Range(self, request: rpc.RangeRequest, context: _Context) -> rpc.RangeResponse:
        store = self.store
        barrier = store.read_barrier()
        if barrier is not None:
            await barrier
        return await store.range_yielding(request)

    @answers_store_errors
    async def Put(self, request: rpc.PutRequest, context: _Context) -> rpc.PutResponse:
        store = self.store
        response = store.put(request)
        await _durable(store, context)
        return response

    @answers_store_errors
    async def DeleteRange(
        self, request: rpc.DeleteRangeRequest, context: _Context
    ) -> rpc.DeleteRangeResponse:
        response = self.store.delete_range(request)
        await _durable(self.store, context)
        return response

    @answers_store_errors
    async def Txn(self, request: rpc.TxnRequest, context: _Context) -> rpc.TxnResponse:
        response = self.store.txn(request)
        await _durable(self.store, context)
        return response

    @answers_store_errors
    async def Compact(
        self, request: rpc.CompactionRequest, context: _Context
    ) -> rpc.CompactionResponse:
        response = self.store.compact(request)
        await _durable(self.store, context)
        return response


class WatchService(services.WatchServicer):  # type: ignore[misc]  # aetcd has no type hints
    """The bidirectional Watch stream.

    Two tasks per stream: one reads the client's requests, one writes the responses that
    could not go out at once. Responses are built by the hub's pump (backend/kv/watch.py)
    within a byte budget per stream and per connection; while it is full, the client's next
    request is not read either, so its requests cannot pile up answers.
    """

    def __init__(self, store: Store, streams: set[WatchStream]) -> None:
        self.store = store
        self.streams = streams
        self.budgets: dict[str, Budget] = {}
        """The watch budget each client connection shares among its streams, by peer."""

    def _budget(self, context: _Context) -> Budget:
        peer = context.peer()
        if not peer:
            return Budget()
        budget = self.budgets.get(peer)
        if budget is None:
            budget = self.budgets[peer] = Budget()
        return budget

    async def Watch(
        self, request_iterator: AsyncIterator[rpc.WatchRequest], context: _Context
    ) -> None:
        budget = self._budget(context)
        stream = WatchStream(self.store, budget)
        stream.deliver = context.try_write
        self.streams.add(stream)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if not stream.room():
                        await stream.wait_for_room()
                    stream.handle(request)
            finally:
                stream.send(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await stream.next_output()) is not None:
                await context.write(response)
                stream.written()
            if stream.stopped:
                # etcd's ErrGRPCStopped: a client must not take a shutdown for a clean end.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
        finally:
            reader.cancel()
            stream.close()
            self.streams.discard(stream)
            if not budget.streams and self.budgets.get(context.peer()) is budget:
                del self.budgets[context.peer()]


class LeaseService(services.LeaseServicer):  # type: ignore[misc]  # aetcd has no type hints
    """Grant, Revoke, KeepAlive, TimeToLive and Leases."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @answers_store_errors
    async def LeaseGrant(
        self, request: rpc.LeaseGrantRequest, context: _Context
    ) -> rpc.LeaseGrantResponse:
        response = self.store.lease_grant(request)
        await _durable(self.store, context)
        return response

    @answers_store_errors
    async def LeaseRevoke(
        self, request: rpc.LeaseRevokeRequest, context: _Context
    ) -> rpc.LeaseRevokeResponse:
        response = self.store.lease_revoke(request.ID)
        await _durable(self.store, context)
        return response

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[rpc.LeaseKeepAliveRequest], context: _Context
    ) -> AsyncIterator[rpc.LeaseKeepAliveResponse]:
        store = self.store
        async for request in request_iterator:
            ttl = store.lessor.renew(request.ID)
            yield rpc.LeaseKeepAliveResponse(
                header=store.header(store.space.revision), ID=request.ID, TTL=ttl
            )

    async def LeaseTimeToLive(
        self, request: rpc.LeaseTimeToLiveRequest, context: _Context
    ) -> rpc.LeaseTimeToLiveResponse:
        return self.store.lease_time_to_live(request)

    async def LeaseLeases(
        self, request: rpc.LeaseLeasesRequest, context: _Context
    ) -> rpc.LeaseLeasesResponse:
        return self.store.lease_leases()


class ClusterService(services.ClusterServicer):  # type: ignore[misc]  # aetcd has no type hints
    """The one-member cluster: MemberList; membership changes are refused."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _member(self) -> rpc.Member:
        config = self.store.config
        return rpc.Member(
            ID=self.store.member_id,
            name=config.name,
            peerURLs=list(config.peer_urls),
            clientURLs=list(config.client_urls),
        )

    async def MemberList(
        self, request: rpc.MemberListRequest, context: _Context
    ) -> rpc.MemberListResponse:
        return rpc.MemberListResponse(header=self.store.header(0), members=[self._member()])

    @answers_store_errors
    async def MemberAdd(self, request: rpc.MemberAddRequest, context: _Context) -> None:
        raise errors.SingleNode()

    @answers_store_errors
    async def MemberRemove(self, request: rpc.MemberRemoveRequest, context: _Context) -> None:
        raise errors.SingleNode()

    @answers_store_errors
    async def MemberUpdate(self, request: rpc.MemberUpdateRequest, context: _Context) -> None:
        raise errors.SingleNode()

    @answers_store_errors
    async def MemberPromote(self, request: rpc.MemberPromoteRequest, context: _Context) -> None:
        raise errors.SingleNode()


class MaintenanceService(
    services.MaintenanceServicer  # type: ignore[misc]  # aetcd has no type hints
):
    """Status, Alarm, Hash, HashKV, Defragment and Snapshot."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def Alarm(self, request: rpc.AlarmRequest, context: _Context) -> rpc.AlarmResponse:
        response = self.store.alarm(request)
        await _durable(self.store, context)
        return response

    async def Status(self, request: rpc.StatusRequest, context: _Context) -> rpc.StatusResponse:
        return self.store.status(API_VERSION)

    async def Defragment(
        self, request: rpc.DefragmentRequest, context: _Context
    ) -> rpc.DefragmentResponse:
        await self.store.take_snapshot()
        return rpc.DefragmentResponse(header=self.store.header(self.store.space.revision))

    async def Hash(self, request: rpc.HashRequest, context: _Context) -> rpc.HashResponse:
        return self.store.hash_all()

    @answers_store_errors
    async def HashKV(self, request: rpc.HashKVRequest, context: _Context) -> rpc.HashKVResponse:
        return self.store.hash_kv(request.revision)

    async def Snapshot(
        self, request: rpc.SnapshotRequest, context: _Context
    ) -> AsyncIterator[rpc.SnapshotResponse]:
        """The state as of now, for `etcdctl snapshot save`; `clusterd kv --restore-snapshot`
        starts a store from the file. Built in a thread, sent in etcd's 32 KiB chunks."""
        store = self.store
        build = store.backup()
        data = await asyncio.get_running_loop().run_in_executor(None, build)
        header = store.header(store.space.revision)
        for offset in range(0, len(data), SNAPSHOT_CHUNK):
            blob = data[offset : offset + SNAPSHOT_CHUNK]
            remaining = len(data) - offset - len(blob)
            yield rpc.SnapshotResponse(header=header, remaining_bytes=remaining, blob=blob)

    @answers_store_errors
    async def MoveLeader(self, request: rpc.MoveLeaderRequest, context: _Context) -> None:
        raise errors.SingleNode()


AUTH_MANAGEMENT = (
    "AuthEnable",
    "AuthDisable",
    "AuthStatus",
    "UserAdd",
    "UserGet",
    "UserList",
    "UserDelete",
    "UserChangePassword",
    "UserGrantRole",
    "UserRevokeRole",
    "RoleAdd",
    "RoleGet",
    "RoleList",
    "RoleDelete",
    "RoleGrantPermission",
    "RoleRevokePermission",
)
"""The Auth service's calls that manage users and roles: the store has none of them."""


def _unimplemented(name: str) -> Callable[..., Awaitable[NoReturn]]:
    async def method(self: object, request: object, context: _Context) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"clusterd kv: {name} is not implemented (the bundled store has no authentication)",
        )
        raise AssertionError("abort() raises")

    method.__name__ = name
    return method


class AuthService(services.AuthServicer):  # type: ignore[misc]  # aetcd has no type hints
    """Authentication is not enabled; answer as etcd does then. Managing users and roles is
    not offered at all: each of those calls ends with UNIMPLEMENTED, as a gRPC server answers
    for a feature it does not have, and the other calls on the connection go on."""

    @answers_store_errors
    async def Authenticate(self, request: rpc.AuthenticateRequest, context: _Context) -> None:
        raise errors.AuthNotEnabled()


for _name in AUTH_MANAGEMENT:
    setattr(AuthService, _name, _unimplemented(_name))


@dataclass
class TLSConfig:
    """Server certificate, key, and optionally the CA that client certificates must chain to."""

    cert_file: str
    key_file: str
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        return server_ssl_context(
            self.cert_file, self.key_file, self.trusted_ca_file, self.client_cert_auth
        )


FREEZE_SECONDS = 1.0
FREEZE_REVISIONS = 1000


def _freeze_history() -> None:
    """Moves what has lived until now out of the reach of Python's full garbage collections.

    The store's history is long-lived and free of reference cycles, yet every record is an
    object the cyclic collector tracks, and a full collection walks them all: measured, 112 ms
    at 200,000 revisions, growing with the store, a stall in every call and watch that waits
    behind it. Frozen objects are still freed by reference counting when compaction drops
    them; only cycles among them would never be collected, so the young generations are
    collected first and the wire layer breaks its own cycles when a connection ends.
    """
    gc.collect(1)
    gc.freeze()


class KVServer:
    """The store behind a gRPC server, with its background duties."""

    def __init__(
        self,
        store: Store,
        listeners: list[tuple[str, TLSConfig | None]],
        progress_interval: float = 600.0,
        compaction: tuple[str, float] | None = None,
        limits: Limits | None = None,
        http_limits: HTTPLimits | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.http_limits = http_limits
        self.http: HTTPSide | None = None
        """The HTTP/1.1 side on the same listeners (/health, /metrics, v2, the v3 gateway)."""
        self.listeners = listeners
        self.listening = 0
        """How many of the listeners are up (start stops at the first that fails)."""
        self.progress_interval = progress_interval
        self.compaction = compaction
        self.streams: set[WatchStream] = set()
        self.server: WireServer | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        store = self.store
        server = WireServer(store.config.max_request_bytes + GRPC_OVERHEAD_BYTES, self.limits)
        server.add(services.add_KVServicer_to_server, KVService(store))
        server.add(services.add_WatchServicer_to_server, WatchService(store, self.streams))
        server.add(services.add_LeaseServicer_to_server, LeaseService(store))
        server.add(services.add_ClusterServicer_to_server, ClusterService(store))
        server.add(services.add_MaintenanceServicer_to_server, MaintenanceService(store))
        server.add(services.add_AuthServicer_to_server, AuthService())
        self.server = server
        http_limits = self.http_limits or HTTPLimits(
            max_body_bytes=store.config.max_request_bytes + 64 * 1024
        )
        app = HTTPApp(store, StoreMetrics(store, self.streams, server))
        self.http = attach(server, app, http_limits, server.limits.preface_timeout)
        for address, tls in self.listeners:
            port = await server.listen(address, tls.ssl_context() if tls is not None else None)
            self.port = self.port or port
            self.listening += 1
        _freeze_history()  # what recovery built
        self._tasks = [
            asyncio.ensure_future(self._expire_leases()),
            asyncio.ensure_future(self._notify_progress()),
            asyncio.ensure_future(self._keep_history_frozen()),
        ]
        if self.compaction is not None:
            self._tasks.append(asyncio.ensure_future(self._auto_compact(*self.compaction)))

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.store.expire_leases():
                with contextlib.suppress(OSError):
                    await self.store.durable()

    async def _keep_history_frozen(self) -> None:
        last = self.store.space.revision
        while True:
            await asyncio.sleep(FREEZE_SECONDS)
            revision = self.store.space.revision
            if revision - last >= FREEZE_REVISIONS:
                last = revision
                _freeze_history()

    async def _notify_progress(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval)
            for stream in list(self.streams):
                stream.notify_progress()

    async def _auto_compact(self, mode: str, retention: float) -> None:
        """etcd's auto-compaction: keep ``retention`` revisions, or ``retention`` seconds."""
        store = self.store
        marks: list[tuple[float, int]] = []
        loop = asyncio.get_running_loop()
        interval = 300.0 if mode == "revision" else max(1.0, min(retention / 10, 3600.0))
        while True:
            await asyncio.sleep(interval)
            space = store.space
            if mode == "revision":
                target = space.revision - int(retention)
            else:
                now = loop.time()
                marks.append((now, space.revision))
                target = 0
                while marks and marks[0][0] <= now - retention:
                    target = marks.pop(0)[1]
            if target > space.compacted:
                log.info("auto-compacting at revision %d", target)
                store.compact(rpc.CompactionRequest(revision=target))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
        if self.http is not None:
            self.http.close()
        for stream in list(self.streams):
            stream.shut_down()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        with contextlib.suppress(OSError):
            await self.store.durable()
        for task in list(self.store.background):
            with contextlib.suppress(Exception):
                await task
        self.store.wal.close()
