"""One port, two protocols: a connection that opens with the HTTP/2 preface is gRPC, any
other is HTTP/1.1 (as etcd's cmux splits its client port).

The sniffer is the connection's protocol only until the first bytes tell which it is; then
it hands the transport to the chosen protocol (``set_protocol``) with the bytes read so far,
and is out of the path: gRPC connections pay one comparison of their first bytes. TLS
connections whose ALPN chose ``h2`` (gRPC) or ``http/1.1`` skip the sniff; without ALPN they
are sniffed as plain ones are.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from clustertui.backend.kv.http.app import HTTPApp
from clustertui.backend.kv.http.conn import HTTPConnection, HTTPLimits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.[0-9]\r?\n")
MAX_FIRST_LINE = 4096
"""How much of a first line is read to tell HTTP/1 (cmux's limit in etcd)."""


class HTTPSide:
    """What every HTTP/1.1 connection of one server shares: the handler, limits, the count."""

    def __init__(self, app: HTTPApp, limits: HTTPLimits | None = None) -> None:
        self.app = app
        self.limits = limits or HTTPLimits()
        self.connections: set[HTTPConnection] = set()

    def connection(self) -> HTTPConnection:
        return HTTPConnection(self.app, self.limits, self.connections)

    def close(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()


class Sniffer(asyncio.Protocol):
    """Holds a new connection until its first bytes say HTTP/2 or HTTP/1.x: the preface, or a
    first line shaped as an HTTP/1 request line; anything else is closed."""

    def __init__(
        self, grpc: Callable[[], asyncio.Protocol], http: HTTPSide, timeout: float = 5.0
    ) -> None:
        self.grpc = grpc
        self.http = http
        self.timeout = timeout
        """The first bytes must come within this (the wire layer's preface timeout)."""
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            chosen = sslobj.selected_alpn_protocol()
            if chosen == "h2":
                self._hand_over(self.grpc())
                return
            if chosen == "http/1.1":
                self._hand_over(self.http.connection())
                return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.timeout, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        size = min(len(buffer), len(PREFACE))
        if buffer[:size] == PREFACE[:size]:
            if size < len(PREFACE):
                self.buffer = buffer
                return
            self._hand_over(self.grpc(), buffer)
            return
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > MAX_FIRST_LINE and self.transport is not None:
                self.transport.close()
            else:
                self.buffer = buffer
            return
        if _REQUEST_LINE.match(buffer, 0, end + 1):
            self._hand_over(self.http.connection(), buffer)
        elif self.transport is not None:
            # Neither protocol: closed without an answer, as etcd's cmux closes it.
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def _hand_over(self, protocol: asyncio.Protocol, data: bytes = b"") -> None:
        transport = self.transport
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data and not transport.is_closing():
            protocol.data_received(data)


def attach(
    server: object, store_app: HTTPApp, limits: HTTPLimits | None = None, timeout: float = 5.0
) -> HTTPSide:
    """Puts the HTTP/1.1 side behind a wire server's listeners: its ``connection_factory``
    becomes a sniffer in front of the HTTP/2 connection it made before."""
    side = HTTPSide(store_app, limits)
    grpc_factory = server.connection_factory  # type: ignore[attr-defined]
    server.connection_factory = lambda: Sniffer(grpc_factory, side, timeout)  # type: ignore[attr-defined]
    return side
