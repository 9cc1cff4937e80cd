"""One HTTP/1.1 connection over asyncio, parsed by h11 (sans-IO), handled one request at a time.

h11 turns the connection's bytes into request events and our responses into bytes; this
Protocol owns the transport, the limits and the handler tasks, as the HTTP/2 layer does for
gRPC. Requests on a kept-alive connection are served in order; reading pauses while one is
being answered, so a client cannot queue work faster than it takes answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger("clusterd.kv.http")

_CORS = [
    (b"Access-Control-Allow-Headers", b"accept, content-type, authorization"),
    (b"Access-Control-Allow-Methods", b"POST, GET, OPTIONS, PUT, DELETE"),
    (b"Access-Control-Allow-Origin", b"*"),
]
"""etcd answers every client-port HTTP request with these."""


@dataclass
class HTTPLimits:
    """What one HTTP/1.1 client may hold of the store (see LIMITS.md)."""

    max_header_bytes: int = 64 * 1024
    """Request line and headers; more gets 431, as Go's server answers past its limit."""
    max_body_bytes: int = 1536 * 1024 + 64 * 1024
    """A request body; more gets 413. The store's --max-request-bytes plus encoding room."""
    idle_timeout: float = 120.0
    """A connection with no request in progress is closed after this long."""
    header_timeout: float = 10.0
    """A request's line and headers must arrive within this (slow-loris)."""
    max_connections: int = 1000
    """HTTP/1.1 connections open at once; more are closed as they arrive."""


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    path: str = field(init=False)
    query: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = parts.path or "/"
        self.query = parts.query

    def params(self) -> dict[str, str]:
        """Query parameters, then form fields of a form-encoded body (the v2 API's way)."""
        values = dict(parse_qsl(self.query, keep_blank_values=True))
        kind = self.headers.get("content-type", "")
        if self.body and kind.startswith("application/x-www-form-urlencoded"):
            values.update(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))
        return values


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    """A streamed body (chunked): the v2 wait and the v3 gateway's watch."""


def text(status: int, message: str) -> Response:
    """A plain-text answer worded as Go's net/http words it."""
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class HTTPConnection(asyncio.Protocol):
    """Serves one client's HTTP/1.1 requests through ``handler``."""

    def __init__(
        self, handler: Handler, limits: HTTPLimits, connections: set[HTTPConnection]
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.connections = connections
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.paused = False
        self.drained: asyncio.Future[None] | None = None
        self.reading_paused = False
        """Reading stopped: a client pipelined more than one request's worth ahead."""

    # -- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.connections) >= self.limits.max_connections:
            log.warning("HTTP connection refused: %d open", len(self.connections))
            transport.close()
            self.transport = None
            return
        self.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError:
            pass  # reported by next_event below
        if self.task is None:
            self._events()
        elif len(self.h11.trailing_data[0]) > self.limits.max_header_bytes + (
            self.limits.max_body_bytes
        ):
            # While a request is answered, what is pipelined behind it waits unparsed; past
            # one request's worth, reading stops until the answer is out.
            self.reading_paused = True
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        with contextlib.suppress(h11.RemoteProtocolError):
            self.h11.receive_data(b"")
        if self.task is None:
            self._events()
        return None

    # -- requests

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.task is None and self.transport is not None:
            self.transport.close()

    def _events(self) -> None:
        conn = self.h11
        while self.transport is not None and self.task is None:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                self._refuse(error.error_status_hint)
                return
            if event is h11.NEED_DATA:
                if conn.their_state is h11.DONE:
                    return
                return
            if event is h11.PAUSED:
                # The previous answer is out: start the next request of a kept-alive client.
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    self._arm(self.limits.idle_timeout)
                    continue
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = bytearray()
                # h11 bounds a head that arrives in pieces; one that came whole is measured.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > self.limits.max_header_bytes:
                    self._refuse(431)
                    return
                if int(dict(event.headers).get(b"content-length", b"0") or 0) > (
                    self.limits.max_body_bytes
                ):
                    self._refuse(413)
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.limits.max_body_bytes:
                    self._refuse(413)
                    return
            elif isinstance(event, h11.EndOfMessage):
                request = self.request
                assert request is not None
                self.request = None
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                self.task = self.loop.create_task(self._serve(request, bytes(self.body)))
                self.body = bytearray()
                return
            elif isinstance(event, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    def _refuse(self, status: int) -> None:
        """A request we will not parse: Go's plain answer, then the connection ends."""
        phrase = {413: "Request Entity Too Large", 431: "Request Header Fields Too Large"}.get(
            status, "Bad Request"
        )
        if status not in (413, 431):
            status = 400
        body = f"{status} {phrase}".encode()
        head = (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        if self.transport is not None:
            self.transport.write(head + body)
            self.transport.close()

    async def _serve(self, event: h11.Request, body: bytes) -> None:
        headers = {name.decode("latin-1").lower(): v.decode("latin-1") for name, v in event.headers}
        request = Request(event.method.decode("ascii"), event.target.decode("latin-1"), headers)
        request.body = body
        try:
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.path)
                response = text(500, "Internal Server Error")
            await self._send(response, request.method == "HEAD")
        except (h11.LocalProtocolError, ConnectionError):
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.task = None
        if self.transport is None:
            return
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._arm(self.limits.idle_timeout)
        if self.reading_paused:
            self.reading_paused = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()
        self._events()

    async def _send(self, response: Response, head_only: bool) -> None:
        headers = [*_CORS, (b"Content-Type", response.content_type.encode())]
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        headers.append((b"Date", formatdate(usegmt=True).encode()))
        if response.stream is None:
            headers.append((b"Content-Length", str(len(response.body)).encode()))
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        head = self.h11.send(
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        )
        if response.stream is None:
            # One write for the whole answer: head, body and end together.
            out = [head or b""]
            if response.body and not head_only:
                out.append(self.h11.send(h11.Data(data=response.body)) or b"")
            out.append(self.h11.send(h11.EndOfMessage()) or b"")
            if self.transport is not None:
                self.transport.write(b"".join(out))
            return
        if head and self.transport is not None:
            self.transport.write(head)
        # A stream ends when the client goes: watch for the transport closing meanwhile.
        async for chunk in response.stream:
            if self.transport is None:
                return
            self._write(h11.Data(data=chunk))
            if self.paused:
                self.drained = self.loop.create_future()
                await self.drained
        self._write(h11.EndOfMessage())

    def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data and self.transport is not None:
            self.transport.write(data)
