"""etcd's v3 JSON gateway: the gRPC calls people curl, as POSTs of the protobufs' JSON.

The mapping is protobuf's (as etcd's grpc-gateway with ``OrigName``): field names as in the
.proto files, bytes as base64, 64-bit integers as strings, defaults left out. Errors are
``{"error": ..., "message": ..., "code": <gRPC code>}`` with grpc-gateway's HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from aetcd import rpc
from google.protobuf import json_format
from google.protobuf.message import Message

from clustertui.backend.kv.apply import Store
from clustertui.backend.kv.errors import StoreError
from clustertui.backend.kv.http.conn import Request, Response, text
from clustertui.backend.kv.http.watching import responses
from clustertui.backend.kv.watch import WatchStream

API_VERSION = "3.4.0"

_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
"""grpc-gateway's runtime.HTTPStatusFromCode (the version etcd 3.4 vendors)."""


class GatewayError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def error_response(code: grpc.StatusCode, message: str) -> Response:
    body = {"error": message, "message": message, "code": code.value[0]}
    return Response(_HTTP_STATUS.get(code, 500), _body(body))


class Gateway:
    """Answers /v3/... (and the /v3beta, /v3alpha aliases etcd 3.4 keeps)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        s = store
        self.unary: dict[str, tuple[type[Message], Callable[[Any], Message], bool]] = {
            "kv/range": (rpc.RangeRequest, s.range, False),
            "kv/put": (rpc.PutRequest, s.put, True),
            "kv/deleterange": (rpc.DeleteRangeRequest, s.delete_range, True),
            "kv/txn": (rpc.TxnRequest, s.txn, True),
            "kv/compaction": (rpc.CompactionRequest, s.compact, True),
            "lease/grant": (rpc.LeaseGrantRequest, s.lease_grant, True),
            "lease/revoke": (rpc.LeaseRevokeRequest, lambda r: s.lease_revoke(r.ID), True),
            "kv/lease/revoke": (rpc.LeaseRevokeRequest, lambda r: s.lease_revoke(r.ID), True),
            "lease/timetolive": (rpc.LeaseTimeToLiveRequest, s.lease_time_to_live, False),
            "kv/lease/timetolive": (rpc.LeaseTimeToLiveRequest, s.lease_time_to_live, False),
            "lease/leases": (rpc.LeaseLeasesRequest, lambda r: s.lease_leases(), False),
            "kv/lease/leases": (rpc.LeaseLeasesRequest, lambda r: s.lease_leases(), False),
            "maintenance/status": (rpc.StatusRequest, lambda r: s.status(API_VERSION), False),
            "maintenance/alarm": (rpc.AlarmRequest, s.alarm, True),
            "cluster/member/list": (rpc.MemberListRequest, self._members, False),
        }

    def _members(self, request: rpc.MemberListRequest) -> rpc.MemberListResponse:
        store = self.store
        config = store.config
        member = rpc.Member(
            ID=store.member_id,
            name=config.name,
            peerURLs=list(config.peer_urls),
            clientURLs=list(config.client_urls),
        )
        return rpc.MemberListResponse(header=store.header(0), members=[member])

    async def handle(self, request: Request) -> Response:
        _, version, rest = request.path.split("/", 2)
        del version
        route = rest.rstrip("/")
        known = route in self.unary or route in ("watch", "lease/keepalive")
        if not known:
            return text(404, "Not Found")
        if request.method != "POST":
            response = text(405, "Method Not Allowed")
            response.headers.append(("X-Content-Type-Options", "nosniff"))
            return response
        try:
            if route == "watch":
                return self._watch(self._parse(request.body, rpc.WatchRequest))
            if route == "lease/keepalive":
                parsed = self._parse(request.body, rpc.LeaseKeepAliveRequest)
                return self._keepalive(parsed)
            kind, call, writes = self.unary[route]
            parsed = self._parse(request.body, kind)
            store = self.store
            if not writes:
                barrier = store.read_barrier()
                if barrier is not None:
                    await barrier
            try:
                result = call(parsed)
            except StoreError as error:
                return error_response(error.code, error.message)
            if writes:
                try:
                    await store.durable()
                except OSError as error:
                    return error_response(
                        grpc.StatusCode.UNAVAILABLE, f"clusterd kv: WAL write failed: {error}"
                    )
            response = Response(200, _body(to_json(result)))
            response.headers.append(("Grpc-Metadata-Content-Type", "application/grpc"))
            return response
        except GatewayError as error:
            return error_response(error.code, error.message)

    @staticmethod
    def _parse(body: bytes, kind: type[Message]) -> Any:
        message = kind()
        if not body.strip():
            return message
        try:
            json_format.Parse(body, message)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as error:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        return message

    def _keepalive(self, request: rpc.LeaseKeepAliveRequest) -> Response:
        store = self.store
        ttl = store.lessor.renew(request.ID)
        reply = rpc.LeaseKeepAliveResponse(
            header=store.header(store.space.revision), ID=request.ID, TTL=ttl
        )

        async def body() -> AsyncIterator[bytes]:
            yield _body({"result": to_json(reply)}) + b"\n"

        return Response(
            200, stream=body(), headers=[("Grpc-Metadata-Content-Type", "application/grpc")]
        )

    def _watch(self, request: rpc.WatchRequest) -> Response:
        stream = WatchStream(self.store)
        stream.handle(request)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for item in responses(stream):
                    yield _body({"result": to_json(item)}) + b"\n"
            finally:
                stream.close()

        return Response(
            200, stream=body(), headers=[("Grpc-Metadata-Content-Type", "application/grpc")]
        )
