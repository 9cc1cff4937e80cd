"""Provides the one etcd v3 client factory every part of clustertui uses.

aetcd is the client. It dials one plaintext ``host:port``; this module adds what a
cluster tool needs on top: several endpoints with fail-over, TLS, and errors that
say what went wrong in words a sysadmin can act on.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions as aex
import aetcd.rtypes
import aetcd.watcher
import grpc
from aetcd import rpc

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
PUT = rpc.Event.PUT
"""A watch event's type when the key was put (etcd's mvccpb.PUT); every module uses this one."""
DELETE = rpc.Event.DELETE
"""A watch event's type when the key was deleted (etcd's mvccpb.DELETE)."""
DIAL_SECONDS = 1.0
"""How long diagnosing a timeout waits for a TCP connection to an endpoint."""


class EtcdError(aex.ClientError):  # type: ignore[misc]  # aetcd has no type hints
    """Base of every typed store error; ``hint`` says how to fix it where we know."""

    hint: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class StoreUnavailable(
    EtcdError,
    aex.ConnectionFailedError,  # type: ignore[misc]  # aetcd has no type hints
):
    """No endpoint answered."""

    hint = "is the store running and reachable at the endpoints given?"


class StoreTimeout(
    EtcdError,
    aex.ConnectionTimeoutError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The request did not finish before its deadline."""


class RevisionCompacted(
    EtcdError,
    aex.RevisionCompactedError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The revision asked for is older than the store's compaction point."""

    def __init__(self, compacted_revision: int = 0, message: str = "") -> None:
        aex.RevisionCompactedError.__init__(self, compacted_revision)
        if message:
            self.args = (message,)


class FutureRevision(
    EtcdError,
    aex.InvalidArgumentError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The revision asked for is newer than the store's current revision."""


class KeyNotFound(EtcdError):
    """The key is not in the store."""


class LeaseNotFound(EtcdError):
    """The lease does not exist, or has already expired."""


class InvalidRequest(
    EtcdError,
    aex.InvalidArgumentError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The store refused the request's arguments."""


class NoSpace(EtcdError):
    """The store raised its NOSPACE alarm: it is over its quota."""

    hint = "compact and defragment the store, or raise --quota-backend-bytes"


class RequestTooLarge(
    EtcdError,
    aex.InvalidArgumentError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The request is larger than the store accepts."""


class AuthFailed(
    EtcdError,
    aex.UnauthenticatedError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The store refused the credentials."""


class PermissionDenied(EtcdError):
    """The user has no permission for the request."""


class TLSError(
    EtcdError,
    aex.ConnectionFailedError,  # type: ignore[misc]  # aetcd has no type hints
):
    """The TLS handshake failed."""

    hint = "check --cacert, --cert and --key against the server's certificate"


class ConfigError(EtcdError):
    """The endpoints or TLS files given are unusable."""


_MESSAGES: list[tuple[str, type[EtcdError]]] = [
    ("required revision has been compacted", RevisionCompacted),
    ("required revision is a future revision", FutureRevision),
    ("requested lease not found", LeaseNotFound),
    ("database space exceeded", NoSpace),
    ("request is too large", RequestTooLarge),
    ("authentication failed", AuthFailed),
    ("permission denied", PermissionDenied),
    ("ssl", TLSError),
    ("handshake", TLSError),
    ("certificate", TLSError),
]

_CODES: dict[grpc.StatusCode, type[EtcdError]] = {
    grpc.StatusCode.UNAVAILABLE: StoreUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: StoreTimeout,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: RevisionCompacted,
    grpc.StatusCode.NOT_FOUND: LeaseNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: NoSpace,
    grpc.StatusCode.UNAUTHENTICATED: AuthFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

_AETCD_TYPES: dict[type[Exception], type[EtcdError]] = {
    aex.ConnectionFailedError: StoreUnavailable,
    aex.ConnectionTimeoutError: StoreTimeout,
    aex.WatchTimeoutError: StoreTimeout,
    aex.InvalidArgumentError: InvalidRequest,
    aex.UnauthenticatedError: AuthFailed,
}


def typed_error(error: BaseException) -> EtcdError:
    """Return the typed store error for an aetcd or gRPC exception."""
    if isinstance(error, EtcdError):
        return error
    if isinstance(error, aex.RevisionCompactedError):
        return RevisionCompacted(error.compacted_revision)
    cause = error.__cause__ if isinstance(error.__cause__, grpc.RpcError) else error
    code = cause.code() if isinstance(cause, grpc.aio.AioRpcError) else None
    details = (cause.details() if isinstance(cause, grpc.aio.AioRpcError) else None) or str(error)
    lowered = details.lower()
    for needle, kind in _MESSAGES:
        if needle in lowered:
            return kind(details)
    if code is not None and code in _CODES:
        return _CODES[code](details)
    for base, kind in _AETCD_TYPES.items():
        if isinstance(error, base):
            return kind(details)
    return EtcdError(details)


async def _typed_for(client: Any, error: BaseException) -> EtcdError:
    """The typed error, knowing the channel.

    Calls wait for a connection until their deadline, so a dead or misconfigured endpoint
    surfaces as a bare timeout; one probe that does not wait brings back the dial's own
    error (refused, TLS handshake, resolution) to say what is really wrong.
    """
    typed = typed_error(error)
    channel = getattr(client, "channel", None)
    if not isinstance(typed, StoreTimeout) or channel is None:
        return typed
    if channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY:
        return typed
    try:
        await rpc.KVStub(channel).Range(
            rpc.RangeRequest(key=b"\0", count_only=True, limit=1),
            timeout=2,
            metadata=getattr(client, "metadata", None),
            wait_for_ready=False,
        )
    except grpc.RpcError as probe_error:
        probed = typed_error(probe_error)
        if not isinstance(probed, StoreTimeout):
            return probed
    except Exception:  # the probe only refines the message; the original error stands
        pass
    urls = ", ".join(endpoint.url for endpoint in getattr(client, "endpoints", []))
    return StoreUnavailable(f"no answer from {urls or 'the store'} ({typed.args[0]})")


async def diagnose(client: Any, error: BaseException) -> EtcdError:
    """The typed error for ``error``, probing ``client``'s channel when it was a bare timeout.

    A plain TCP dial of each endpoint comes first: a refused port, no route or an unknown
    name answers at once, where gRPC's own probe waits for its reconnect backoff.
    """
    typed = typed_error(error)
    channel = getattr(client, "channel", None)
    if isinstance(typed, StoreTimeout) and channel is not None:
        if channel.get_state(try_to_connect=False) != grpc.ChannelConnectivity.READY:
            reason = await _dial_reason(getattr(client, "endpoints", []))
            if reason:
                return StoreUnavailable(reason)
    return await _typed_for(client, error)


async def _dial_reason(endpoints: Sequence[Endpoint]) -> str:
    """Why no endpoint takes a TCP connection, or "" when one does (or none is known)."""
    reasons = []
    for endpoint in endpoints:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port), DIAL_SECONDS
            )
        except (OSError, TimeoutError) as error:
            number = getattr(error, "errno", None)
            why = os.strerror(number) if number else "no answer to a TCP dial"
            reasons.append(f"{endpoint.url}: {why}")
            continue
        writer.close()
        return ""
    return "; ".join(reasons)


_CAUSES: list[tuple[tuple[str, ...], str, str]] = [
    (("connection refused",), "connection refused", "is the store running there?"),
    (
        ("no route to host", "network is unreachable", "host is unreachable"),
        "no route to the host",
        "check the address, the network and any firewall, or reach it with --tunnel",
    ),
    (
        ("resolving", "name not found", "lookup", "name or service not known"),
        "its host name does not resolve",
        "check the host name in the endpoint",
    ),
    (("connection reset", "broken pipe", "eof"), "the connection was cut", "is it a store?"),
]


def error_words(
    error: BaseException,
    endpoints: Sequence[str] = (),
    *,
    timeout: float | None = None,
    waited_for: str = "an answer",
    wait_longer: str = "",
) -> str:
    """The words the console and clusterctl both show for a store error: what happened, its
    cause (refused, no route, TLS, auth, timeout with what was waited for) and the next step."""
    typed = typed_error(error)
    where = ", ".join(endpoints) or "the endpoints given"
    details = str(typed.args[0]) if typed.args else str(typed)
    lowered = details.lower()
    if isinstance(typed, TLSError):
        return (
            f"the TLS handshake with {where} failed ({details}); "
            "check --cacert, --cert and --key against the server's certificate"
        )
    if isinstance(typed, AuthFailed):
        return (
            f"the store at {where} refused the credentials ({details}); check the user and password"
        )
    if isinstance(typed, PermissionDenied):
        return f"the store at {where} denied the request ({details}); check the user's role"
    for needles, cause, step in _CAUSES:
        if any(needle in lowered for needle in needles):
            return f"nobody answers at {where}: {cause}; {step}"
    if isinstance(typed, StoreTimeout):
        within = f" within {timeout:g} s" if timeout else ""
        longer = f" ({wait_longer} to wait longer)" if wait_longer else ""
        return (
            f"{where} gave no answer{within} while waiting for {waited_for}; "
            f"is the store overloaded, or a member down?{longer}"
        )
    if isinstance(typed, StoreUnavailable):
        return f"nobody answers at {where} ({details}); is the store running there?"
    return str(typed)


def _translating(method: Any) -> Any:
    """Wrap one aetcd client method so its failures come out as typed errors."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def agen(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                async for item in method(self, *args, **kwargs):
                    yield item
            except (aex.ClientError, grpc.RpcError) as error:
                raise await _typed_for(self, error) from error

        return agen

    @functools.wraps(method)
    async def coro(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except (aex.ClientError, grpc.RpcError) as error:
            raise await _typed_for(self, error) from error

    return coro


@dataclass(frozen=True)
class Endpoint:
    """One store endpoint parsed from ``http://host:port`` or ``https://host:port``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https", "unix", "unixs"):
            raise ConfigError(f"endpoint {url!r}: scheme must be http or https")
        if not parts.hostname:
            raise ConfigError(f"endpoint {url!r} names no host")
        try:
            port = parts.port or 2379
        except ValueError as error:
            raise ConfigError(f"endpoint {url!r}: {error}") from error
        return cls(parts.scheme, parts.hostname, port)

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "unixs")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ClientConfig:
    """Everything needed to reach a store: endpoints, TLS files, credentials, deadline."""

    endpoints: Sequence[str] = (DEFAULT_ENDPOINT,)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float | None = 5.0
    server_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def parsed(self) -> list[Endpoint]:
        if not self.endpoints:
            raise ConfigError("no endpoints given")
        parsed = [Endpoint.parse(url) for url in self.endpoints]
        if len({e.tls for e in parsed}) > 1:
            raise ConfigError("endpoints mix http and https; use one scheme for all of them")
        return parsed


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from error


def _grpc_target(endpoints: list[Endpoint]) -> str:
    """One gRPC target that lists every endpoint, resolved to addresses.

    gRPC's ``ipv4:``/``ipv6:`` schemes take several addresses, and pick_first moves to the
    next one when the connected member dies, which is the fail-over the client needs.
    """
    if len(endpoints) == 1:
        only = endpoints[0]
        host = f"[{only.host}]" if ":" in only.host else only.host
        return f"{host}:{only.port}"
    v4: list[str] = []
    v6: list[str] = []
    for endpoint in endpoints:
        try:
            hosts = [str(ipaddress.ip_address(endpoint.host))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
            except socket.gaierror as error:
                raise ConfigError(f"cannot resolve {endpoint.host}: {error.strerror}") from error
            hosts = [str(info[4][0]) for info in infos]
        for host in hosts:
            if ":" in host:
                v6.append(f"[{host}]:{endpoint.port}")
            else:
                v4.append(f"{host}:{endpoint.port}")
    # One target holds one address family; IPv4 is what etcd members advertise most.
    if v4:
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    return "ipv6:" + ",".join(dict.fromkeys(v6))


# Calls wait for a connection until their deadline instead of failing at once while the
# channel redials (a restarted member, fail-over to the next endpoint): a request that never
# left is safe to send late. Watch streams are left out so their owners see the drop and say so.
# Reads are also safe to repeat, so gRPC retries them on UNAVAILABLE (an election in progress);
# writes are not, and their callers decide.
_READS = [
    {"service": "etcdserverpb.KV", "method": "Range"},
    {"service": "etcdserverpb.Lease", "method": "LeaseTimeToLive"},
    {"service": "etcdserverpb.Lease", "method": "LeaseLeases"},
    {"service": "etcdserverpb.Cluster", "method": "MemberList"},
    {"service": "etcdserverpb.Maintenance", "method": "Status"},
]
_UNARY_SERVICES = [
    {"service": f"etcdserverpb.{name}"}
    for name in ("KV", "Lease", "Cluster", "Maintenance", "Auth")
]
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _READS,
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
            {"name": _UNARY_SERVICES, "waitForReady": True},
        ]
    }
)

_KEEPALIVE = {
    "grpc.service_config": _SERVICE_CONFIG,
    "grpc.enable_retries": 1,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # Pings only while calls or watches are open: etcd (PermitWithoutStream=false) counts
    # pings on an idle connection as strikes and answers GOAWAY "too_many_pings".
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 200,
    # A dial a second at most while the store is away (3 s left clients, the console's panes
    # among them, up to 4 s behind a store that was back; a refused dial costs nothing).
    "grpc.max_reconnect_backoff_ms": 1_000,
}


class EtcdClient(aetcd.Client):  # type: ignore[misc]  # aetcd has no type hints
    """aetcd's client with several endpoints, TLS, and typed errors.

    Every public coroutine and async generator of aetcd's client raises
    :class:`EtcdError` subclasses instead of aetcd's or gRPC's exceptions.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.endpoints = config.parsed()
        self._tls = self.endpoints[0].tls
        self._credentials = None
        if self._tls or config.cacert or config.cert:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(config.cacert, "CA file"),
                private_key=_read(config.key, "key file"),
                certificate_chain=_read(config.cert, "certificate file"),
            )
        first = self.endpoints[0]
        super().__init__(
            host=first.host,
            port=first.port,
            username=config.username,
            password=config.password,
            timeout=config.timeout,
            options={**_KEEPALIVE, **config.options},
        )
        # Authenticating awaits; callers racing to the first request must share one channel.
        self._connect_lock = asyncio.Lock()

    def _channel(self) -> grpc.aio.Channel:
        target = _grpc_target(self.endpoints)
        options = dict(self._options)
        if len(self.endpoints) > 1:
            options["grpc.lb_policy_name"] = "pick_first"
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=list(options.items()))
        server_name = self.config.server_name or self.endpoints[0].host
        options["grpc.ssl_target_name_override"] = server_name
        options["grpc.default_authority"] = server_name
        return grpc.aio.secure_channel(target, self._credentials, options=list(options.items()))

    async def connect(self) -> None:
        """Open the channel and the service stubs (gRPC dials lazily, on the first request)."""
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if not self._connected.is_set():
                await self._open()

    async def _open(self) -> None:
        self.channel = self._channel()
        try:
            if self._username is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                response = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                self.metadata = (("token", response.token),)
        except grpc.RpcError as error:
            await self.channel.close()
            self._init_channel_attrs()
            raise await _typed_for(self, error) from error
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()

    async def current_revision(self) -> int:
        """The store's revision now (a cheap count-only range)."""
        await self.connect()
        try:
            response = await self.kvstub.Range(
                rpc.RangeRequest(key=b"\0", count_only=True, limit=1),
                timeout=self._timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as error:
            raise await _typed_for(self, error) from error
        revision: int = response.header.revision
        return revision

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected, or raise :class:`StoreUnavailable`."""
        await self.connect()
        try:
            await self.kvstub.Range(
                rpc.RangeRequest(key=b"\0", count_only=True, limit=1),
                timeout=timeout,
                metadata=self.metadata,
                wait_for_ready=True,
            )
        except grpc.RpcError as error:
            raise await _typed_for(self, error) from error

    async def watch(self, *args: Any, **kwargs: Any) -> aetcd.rtypes.Watch:
        """aetcd's per-event watch, with typed errors from its iterator too."""
        await self.connect()
        try:
            watch = await aetcd.Client.watch(self, *args, **kwargs)
        except (aex.ClientError, grpc.RpcError) as error:
            raise await _typed_for(self, error) from error
        inner = watch._iterator

        async def iterator() -> AsyncIterator[aetcd.rtypes.Event]:
            try:
                async for event in inner():
                    yield event
            except (aex.ClientError, grpc.RpcError) as error:
                raise await _typed_for(self, error) from error

        watch._iterator = iterator
        return watch

    async def watch_batches(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> AsyncIterator[WatchBatch]:
        """Watch ``[key, range_end)`` on a stream of its own, one batch per response.

        Each batch carries the header revision, which is what a resuming watcher needs:
        after a drop it starts again from ``last.revision + 1`` and misses nothing.
        Progress notifications come through as empty batches. A compacted start revision
        raises :class:`RevisionCompacted` with the compaction point.
        """
        await self.connect()
        create = rpc.WatchCreateRequest(
            key=key,
            range_end=range_end or b"",
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
        requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
        await requests.put(rpc.WatchRequest(create_request=create))

        async def outgoing() -> AsyncIterator[rpc.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = rpc.WatchStub(self.channel).Watch(outgoing(), metadata=self.metadata)
        try:
            async for response in call:
                if response.compact_revision:
                    raise RevisionCompacted(
                        response.compact_revision,
                        f"revision {start_revision} is compacted; the oldest kept is "
                        f"{response.compact_revision}",
                    )
                if response.canceled:
                    raise InvalidRequest(response.cancel_reason or "watch canceled by the server")
                if response.created and not response.events:
                    continue
                yield WatchBatch(response.header.revision, list(response.events))
        except grpc.RpcError as error:
            raise await _typed_for(self, error) from error
        finally:
            await requests.put(None)
            call.cancel()


@dataclass(frozen=True)
class WatchBatch:
    """One watch response: the events of one or more revisions, up to ``revision``."""

    revision: int
    events: list[Any]


for _name, _member in inspect.getmembers(aetcd.Client):
    if _name.startswith("_") or _name in EtcdClient.__dict__:
        continue
    if inspect.iscoroutinefunction(_member) or inspect.isasyncgenfunction(_member):
        setattr(EtcdClient, _name, _translating(_member))


def make_client(
    endpoints: Sequence[str] | str = (DEFAULT_ENDPOINT,),
    *,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float | None = 5.0,
    server_name: str | None = None,
) -> EtcdClient:
    """Return a client for the store at ``endpoints`` (a list, or one comma-separated string)."""
    if isinstance(endpoints, str):
        endpoints = [part for part in endpoints.split(",") if part.strip()]
    if (cert and not key) or (key and not cert):
        raise ConfigError("a client certificate needs its key, and a key its certificate")
    return EtcdClient(
        ClientConfig(
            endpoints=tuple(endpoints),
            cacert=cacert,
            cert=cert,
            key=key,
            username=username,
            password=password,
            timeout=timeout,
            server_name=server_name,
        )
    )
