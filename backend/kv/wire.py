"""Serves gRPC over HTTP/2 on asyncio: the part of the protocol that etcd's clients use.

Why not grpc.aio: measured on this project's machines, a grpc.aio servicer that does nothing
costs about 300 µs of CPU per call (grpc.aio on uvloop 293 µs, the threaded server 292 µs),
twenty times what the store itself spends on a put. This layer costs a few tens of µs: one
asyncio Protocol per connection feeds an HTTP/2 state machine (``wire_conn``, over the frame
and HPACK codec of ``wire_codec``), hands whole gRPC messages to the same servicer classes
grpc.aio would run, and writes the responses of everything that finished in one loop
iteration with one system call.

What it speaks (RFC 9113 and gRPC's PROTOCOL-HTTP2): the client preface and SETTINGS, DATA
and HEADERS with CONTINUATION and padding, RST_STREAM, PING, GOAWAY and WINDOW_UPDATE, with
flow control in both directions; unary and streaming calls; status and message in trailers,
or trailers-only when a call fails before answering. What it does not: server push (a server
never pushes), compression (refused with etcd's own error, since etcd installs no
decompressor either) and deadlines (the client enforces its own).

Every client gets a bounded share (see LIMITS.md): streams, header lists and HPACK work per
connection are limited, a connection handles at most ``FRAMES_PER_PASS`` frames before the
loop serves others, pings follow etcd's keepalive policy, a connection that does not
finish its preface in ``PREFACE_TIMEOUT`` seconds is closed, and at the descriptor limit
the ``Listener`` backs off instead of dropping the connections that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from clustertui.backend.kv import wire_conn
from clustertui.backend.kv.wire_codec import (
    FRAME_SIZE,
    MAX_WINDOW,
    MESSAGE_PREFIX,
    PING,
    PROTOCOL_ERROR,
    RESPONSE_HEADERS,
    frame,
    hpack_int,
    status_block,
)
from clustertui.backend.kv.wire_conn import H2Config, H2Connection, H2Stream

log = logging.getLogger("clusterd.kv.wire")

STREAM_WINDOW = 4 * 1024 * 1024
"""How much each stream may send before we have read it: at least a whole request, so a
unary call never waits for a WINDOW_UPDATE (the server raises it for larger limits)."""
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_HEADER_BLOCK = 64 * 1024
"""A request's header block may not grow beyond this across CONTINUATION frames."""
FRAMES_PER_PASS = 64
"""Frames one connection handles before the event loop serves the others."""
PREFACE_TIMEOUT = 5.0
"""Seconds a new connection has to send the client preface and its SETTINGS."""

_PREFIX = MESSAGE_PREFIX
# :status 415 with the name from static entry 8, content-type with the name of entry 31.
_UNSUPPORTED_MEDIA_TYPE = (
    b"\x08\x03415" + hpack_int(31, 4, 0) + hpack_int(25, 7, 0) + b"text/plain; charset=utf-8"
)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Limits:
    """The per-connection limits and keepalive policy (flags of `clusterd kv`, etcd's names)."""

    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 * 1024
    keepalive_min_time: float = 5.0
    keepalive_interval: float = 2 * 3600.0
    keepalive_timeout: float = 20.0
    header_fields_per_second: float = 10_000.0
    preface_timeout: float = PREFACE_TIMEOUT


class Abort(Exception):
    """Ends a call with a status; raised by ``Context.abort``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Context:
    """What a servicer method gets besides its request: the grpc.aio calls the servicers use."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: object) -> None:
        raise Abort(code, details)

    async def write(self, message: Any) -> None:
        """Sends one response of a streaming call; ``bytes`` are sent as already serialized."""
        call = self._call
        await call.conn.send_message(call, self._body(message))

    def try_write(self, message: Any) -> bool:
        """Sends one response of a streaming call now, if nothing waits to go before it.

        False when the client is behind (flow control or a full socket buffer): the
        caller then queues the message and sends it with ``write``, which waits.
        """
        call = self._call
        stream = call.stream
        conn = call.conn
        if stream.pending or stream.reset or call.finished or conn.paused:
            return False
        conn.send_message_now(call, self._body(message))
        return True

    def backlog(self) -> int:
        """Bytes queued for this connection that the socket has not taken yet: this stream's
        flow-controlled output, the connection's unsent frames and the transport's buffer."""
        call = self._call
        conn = call.conn
        size = len(call.stream.pending) + sum(map(len, conn.h2.out))
        transport = conn.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                size += transport.get_write_buffer_size()
        return size

    def _body(self, message: Any) -> bytes:
        """A response serialized, unless it already is."""
        if isinstance(message, bytes):
            return message
        body: bytes = self._call.handler.response_serializer(message)
        return body

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._call.metadata
            if not name.startswith(b":")
        )

    def peer(self) -> str:
        return self._call.conn.peer

    def cancelled(self) -> bool:
        return self._call.stream.reset

    def done(self) -> bool:
        return self._call.finished

    # grpc's servicer base classes answer a method not overridden with these and a raise.
    def set_code(self, code: grpc.StatusCode) -> None:
        self._call.code = code

    def set_details(self, details: str) -> None:
        self._call.details = details


class Inbox:
    """A streaming call's requests, as the async iterator its servicer reads."""

    __slots__ = ("call", "closed", "items", "waiter")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.items: deque[tuple[Any, int]] = deque()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def put(self, request: Any, size: int) -> None:
        self.items.append((request, size))
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> Any:
        while not self.items:
            if self.closed:
                raise StopAsyncIteration
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        request, size = self.items.popleft()
        # The stream's window reopens as its requests are read, not as they arrive: a
        # client that sends faster than the servicer reads is held back by flow control.
        self.call.conn.consumed(self.call, size)
        return request


class Call:
    """One gRPC call on a stream: its handler, what has arrived of its request, its state."""

    __slots__ = (
        "code",
        "conn",
        "details",
        "drained",
        "finished",
        "handler",
        "held",
        "inbox",
        "message",
        "metadata",
        "started",
        "stream",
        "task",
    )

    def __init__(self, conn: Connection, stream: H2Stream, metadata: list[tuple[bytes, bytes]]):
        self.conn = conn
        self.stream = stream
        self.metadata = metadata
        self.handler: Any = None
        self.message = bytearray()
        self.inbox: Inbox | None = None
        self.task: asyncio.Future[None] | None = None
        self.started = False
        self.finished = False
        self.drained: asyncio.Future[None] | None = None
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.held = 0
        """Request bytes received and not yet read (the connection's window waits for them)."""


_REQUEST, _BODY, _RESET, _DRAINED = (
    wire_conn.REQUEST,
    wire_conn.BODY,
    wire_conn.RESET,
    wire_conn.DRAINED,
)
_GOAWAY_RECEIVED, _TERMINATED = wire_conn.GOAWAY_RECEIVED, wire_conn.TERMINATED


class Connection(asyncio.Protocol):
    """One client connection: bytes to the state machine, its events to calls, frames out."""

    def __init__(self, server: WireServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.h2 = H2Connection(server.h2_config, self.loop.time())
        self.flush_scheduled = False
        self.paused = False
        """The client is not reading what we send (the transport's buffer is full)."""
        self.backlogged = False
        """Frames wait in our input buffer: reading stops until they are handled."""
        self.pump_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.resumed: asyncio.Future[None] | None = None
        self.closing = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.heard = True
        self.awaiting_preface = True

    # -- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport: uvloop's are not subclasses of asyncio.Transport.
        stream = self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() not in (None, "h2"):
            transport.close()
            return
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A client that vanished without a FIN (its host died, a tunnel dropped) would hold
            # its watches and leases' streams for ever; TCP keepalive finds it, as Go's
            # listener does for etcd (15 s there). Small answers go out without delay.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
        self.timer = self.loop.call_later(self.server.limits.preface_timeout, self._preface_timeout)
        stream.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if not self.closed.done():
            self.closed.set_result(None)
        for timer in (self.timer, self.pump_handle):
            if timer is not None:
                timer.cancel()
        self.timer = self.pump_handle = None
        h2 = self.h2
        for stream in list(h2.streams.values()):
            stream.reset = True
            if stream.call is not None:
                self._cancel(stream.call)
        h2.streams.clear()
        h2.blocked.clear()
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        # The transport refers to us: drop our side, so no cycle outlives the connection.
        self.transport = None

    def pause_writing(self) -> None:
        # The client is not reading what we send: stop reading what it sends until it does,
        # so a flood of requests or pings whose answers pile up cannot grow our memory.
        self.paused = True
        self._reading()

    def resume_writing(self) -> None:
        self.paused = False
        self._reading()
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def _reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        with contextlib.suppress(Exception):
            if self.paused or self.backlogged:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.h2.receive(data)
        if self.pump_handle is None:
            self._pump()

    def _pump(self) -> None:
        """Handles a bounded batch of the client's frames; more in a later loop pass."""
        self.pump_handle = None
        h2 = self.h2
        now = self.loop.time()
        events = h2.process(now, FRAMES_PER_PASS)
        if events:
            self._dispatch(events)
        if h2.failed:
            for event in events:
                if event[0] == _TERMINATED:
                    log.debug("closing connection from %s: %s", self.peer, event[2])
            self._close_failed()
            return
        if self.awaiting_preface and h2.preface:
            self._start_keepalive()
        if h2.has_input:
            if not self.backlogged:
                self.backlogged = True
                self._reading()
            if h2.resume_at > now:
                self.pump_handle = self.loop.call_at(h2.resume_at, self._pump)
            else:
                self.pump_handle = self.loop.call_soon(self._pump)
        elif self.backlogged:
            self.backlogged = False
            self._reading()
        if h2.out:
            self._schedule_flush()

    def _preface_timeout(self) -> None:
        self.timer = None
        if not self.h2.preface and self.transport is not None:
            log.debug("closing connection from %s: no preface", self.peer)
            self.h2.fail(PROTOCOL_ERROR, "no preface in time")
            self._close_failed()

    def _start_keepalive(self) -> None:
        """grpc-go's server keepalive: a PING after ``interval`` of silence, then ``timeout``."""
        self.awaiting_preface = False
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.server.limits.keepalive_interval, self._keepalive)

    def _keepalive(self) -> None:
        limits = self.server.limits
        if self.transport is None:
            return
        if self.heard:
            self.heard = False
            self.timer = self.loop.call_later(limits.keepalive_interval, self._keepalive)
            return
        # Silent for a whole interval: ping; silent for ``timeout`` more, the client is gone.
        self.h2.out.append(frame(PING, 0, 0, b"keepaliv"))
        self._flush()
        self.timer = self.loop.call_later(limits.keepalive_timeout, self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        if self.transport is None:
            return
        if self.heard:
            self.heard = False
            self.timer = self.loop.call_later(
                self.server.limits.keepalive_interval, self._keepalive
            )
            return
        log.debug("closing connection from %s: keepalive ping unanswered", self.peer)
        self.abort()

    def _dispatch(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            kind = event[0]
            if kind == _BODY:
                call = event[1].call
                data = event[2]
                if call is None or call.finished or call.stream.reset:
                    self.h2.acknowledge(event[3])
                    continue
                if len(data) < event[3]:  # padding is read at once
                    if call.inbox is not None:
                        self.h2.consumed(call.stream, event[3] - len(data))
                    else:
                        self.h2.acknowledge(event[3] - len(data))
                if data:
                    call.held += len(data)
                    if call.handler is not None:
                        self._messages(call, data)
                if event[4]:
                    self._remote_closed(call)
            elif kind == _REQUEST:
                self._request(event[1], event[2], event[3])
            elif kind == _RESET:
                call = event[1].call
                if call is not None:
                    self._cancel(call)
                    self._maybe_close()
            elif kind == _DRAINED:
                call = event[1].call
                if call is not None:
                    drained = call.drained
                    if drained is not None and not drained.done():
                        drained.set_result(None)
                    call.drained = None
                self._maybe_close()
            elif kind == _GOAWAY_RECEIVED:
                self.closing = True
                self._maybe_close()

    def _close_failed(self) -> None:
        transport = self.transport
        self.closing = True
        if transport is not None and not transport.is_closing():
            self._flush()
            transport.close()

    # -- calls

    def _request(self, stream: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        call = Call(self, stream, headers)
        stream.call = call
        path = b""
        grpc_request = False
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-type":
                grpc_request = value.startswith(b"application/grpc")
            elif name == b"grpc-encoding":
                if value != b"identity":  # as etcd: no decompressors
                    self._finish(
                        call,
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"grpc: Decompressor is not installed for grpc-encoding "
                        f'"{value.decode("latin-1")}"',
                    )
                    return
        if not grpc_request:
            self._not_grpc(call, headers)
            return
        handler = self.server.handlers.get(path)
        if handler is None:
            self._finish(call, *self.server.unknown(path.decode("latin-1")))
            return
        call.handler = handler
        if handler.request_streaming:
            call.inbox = Inbox(call)
            self._start(call, call.inbox)
        if end:
            self._remote_closed(call)

    def _not_grpc(self, call: Call, headers: list[tuple[bytes, bytes]]) -> None:
        """A request that is not gRPC: HTTP's 415 with a line of text, as gRPC's spec says."""
        content_type = dict(headers).get(b"content-type", b"").decode("latin-1")
        message = f"invalid gRPC request content-type {content_type!r}"
        self.h2.send_headers(call.stream, _UNSUPPORTED_MEDIA_TYPE)
        self.h2.send_data(call.stream, message.encode() + b"\n")
        self._finish(call, grpc.StatusCode.INVALID_ARGUMENT, message)

    def _messages(self, call: Call, payload: bytes) -> None:
        """Whole gRPC messages out of the stream's bytes, to its handler."""
        buffered = call.message
        if buffered:
            buffered += payload
            data: bytes | bytearray = buffered
        else:
            data = payload
        limit = self.server.max_receive
        handler = call.handler
        offset = 0
        total = len(data)
        while total - offset >= 5:
            compressed, size = _PREFIX.unpack_from(data, offset)
            if size > limit:
                self._finish(
                    call,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({size} vs. {limit})",
                )
                return
            end = offset + 5 + size
            if end > total:
                break
            body = bytes(data[offset + 5 : end])
            offset = end
            if compressed:  # the flag on a message whose call declared no encoding
                self._finish(
                    call,
                    grpc.StatusCode.INTERNAL,
                    "grpc: compressed flag set with identity or empty encoding",
                )
                return
            # etcd's gRPC codec counts each message's protobuf bytes as it unmarshals them.
            self.server.bytes_received += size
            try:
                request = handler.request_deserializer(body)
            except Exception:  # protobuf raises DecodeError, and others
                self._finish(call, grpc.StatusCode.INTERNAL, "error deserializing the request")
                return
            if call.inbox is not None:
                call.inbox.put(request, size + 5)
            elif call.started:
                self._finish(call, grpc.StatusCode.UNIMPLEMENTED, "more than one request")
                return
            else:
                self._start(call, request)
        if offset < total:
            if data is buffered:
                del buffered[:offset]
            else:
                call.message = bytearray(data[offset:])
        elif buffered:
            buffered.clear()
        # A unary request fits its stream's window whole (see STREAM_WINDOW): no update.

    def consumed(self, call: Call, size: int) -> None:
        """A streaming call read a request of ``size`` bytes: the client may send more."""
        h2 = self.h2
        if not call.finished and call.held:
            size = min(size, call.held)
            call.held -= size
            h2.consumed(call.stream, size)
            if h2.out:
                self._schedule_flush()

    def _release(self, call: Call) -> None:
        """The call holds none of its request bytes any more: the connection's window reopens."""
        if call.held:
            h2 = self.h2
            h2.acknowledge(call.held)
            call.held = 0
            if h2.out and not self.flush_scheduled:
                self._schedule_flush()

    def _remote_closed(self, call: Call) -> None:
        if call.inbox is not None:
            call.inbox.close()
        elif not call.started and not call.finished:
            self._finish(call, grpc.StatusCode.INTERNAL, "the call carried no request")

    def _start(self, call: Call, request: Any) -> None:
        call.started = True
        handler = call.handler
        started = self.server.calls_started
        started[handler] = started.get(handler, 0) + 1
        if call.inbox is None:
            self._release(call)  # a unary call's request is whole: its bytes are read
        if handler.request_streaming or handler.response_streaming:
            call.task = asyncio.ensure_future(self._run(call, request))
            return
        try:
            coro = handler.unary_unary(request, Context(call))
        except Exception as error:  # a servicer method that is not a coroutine function
            self._failed(call, error)
            return
        if not inspect.iscoroutine(coro):
            self._failed(call, TypeError(f"{_path(call)} is not a coroutine function"))
            return
        self._step(call, coro)

    def _failed(self, call: Call, error: BaseException) -> None:
        """Ends a call whose handler raised: with the status it set, or UNKNOWN, as grpc does."""
        if isinstance(error, NotImplementedError) or call.code is not None:
            code = call.code or grpc.StatusCode.UNIMPLEMENTED
            self._finish(call, code, call.details or str(error) or "Method not implemented!")
            return
        log.error("%s failed: %s: %s", _path(call), type(error).__name__, error, exc_info=error)
        self._finish(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(error).__name__}: {error}")

    def _step(self, call: Call, coro: Any, _done: object = None) -> None:
        """Runs a unary handler's coroutine to its next wait, as a Task would, but inline.

        Most calls finish without waiting (a read) or wait once (a write waits for the disk),
        and a Task costs a loop pass before it starts. A handler here may await futures and
        coroutines; it must not need ``asyncio.current_task()``.
        """
        try:
            waited = coro.send(None)
        except StopIteration as stop:
            if not call.stream.reset:
                try:
                    body = call.handler.response_serializer(stop.value)
                except Exception as error:
                    self._failed(call, error)
                    return
                self.send_message_now(call, body)
                self._finish(call, grpc.StatusCode.OK, "")
            return
        except Abort as abort:
            self._finish(call, abort.code, abort.message)
            return
        except asyncio.CancelledError:
            self._finish(call, grpc.StatusCode.CANCELLED, "cancelled")
            return
        except Exception as error:
            self._failed(call, error)
            return
        if waited is None:  # a bare yield, as asyncio.sleep(0) does
            self.loop.call_soon(self._step, call, coro)
        elif getattr(waited, "_asyncio_future_blocking", False):
            waited._asyncio_future_blocking = False
            waited.add_done_callback(functools.partial(self._step, call, coro))
        else:
            coro.close()
            self._failed(call, RuntimeError(f"{_path(call)}: a handler yielded {waited!r}"))

    async def _run(self, call: Call, request: Any) -> None:
        handler = call.handler
        context = Context(call)
        code, message = grpc.StatusCode.OK, ""
        try:
            if handler.response_streaming:
                method = (
                    handler.stream_stream if handler.request_streaming else handler.unary_stream
                )
                result = method(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        await self.send_message(call, handler.response_serializer(response))
                else:
                    await result
            else:  # unary calls never get here: _step drives them
                response = await handler.stream_unary(request, context)
                if not call.stream.reset:
                    self.send_message_now(call, handler.response_serializer(response))
        except Abort as abort:
            code, message = abort.code, abort.message
        except asyncio.CancelledError:
            if not call.stream.reset and not self.closing:
                raise
            return
        except Exception as error:
            self._failed(call, error)
            return
        self._finish(call, code, message)

    def send_message_now(self, call: Call, body: bytes) -> None:
        """Queues one response message, within flow control, without waiting."""
        stream = call.stream
        if stream.reset or call.finished or self.transport is None:
            return
        # etcd's gRPC codec counts each response's protobuf bytes as it marshals them.
        self.server.bytes_sent += len(body)
        h2 = self.h2
        if not stream.headers_sent:
            h2.send_headers(stream, RESPONSE_HEADERS)
        h2.send_data(stream, _PREFIX.pack(0, len(body)) + body)
        self._schedule_flush()

    async def send_message(self, call: Call, body: bytes) -> None:
        """Sends one message of a streaming response, waiting while the client is not reading."""
        stream = call.stream
        if stream.reset or self.transport is None:
            raise asyncio.CancelledError
        self.send_message_now(call, body)
        while stream.pending and not stream.reset:
            if call.drained is None:
                call.drained = self.loop.create_future()
            await call.drained
        if self.paused and self.transport is not None and not self.transport.is_closing():
            if self.resumed is None:
                self.resumed = self.loop.create_future()
            await self.resumed
        if stream.reset:
            raise asyncio.CancelledError

    def _finish(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        stream = call.stream
        if call.finished or stream.reset:
            return
        call.finished = True
        if call.inbox is not None:
            call.inbox.close()
        self._release(call)
        if call.handler is not None:
            handled = self.server.calls_handled
            key = (call.handler, code)
            handled[key] = handled.get(key, 0) + 1
        status = status_block(code, message)
        if not stream.headers_sent:
            status = RESPONSE_HEADERS + status
        h2 = self.h2
        if h2.end_stream(stream, status):
            # Ends a call's output: sent at once when it was the connection's only call;
            # with more running, what all finish in this loop pass goes in one write.
            if not h2.streams:
                self._flush()
            else:
                self._schedule_flush()
        self._maybe_close()

    def _cancel(self, call: Call) -> None:
        call.stream.reset = True
        if self.transport is not None:
            self._release(call)
        if call.inbox is not None:
            call.inbox.close()
        if call.task is not None and not call.task.done():
            call.task.cancel()
        if call.drained is not None and not call.drained.done():
            call.drained.set_result(None)

    # -- output

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        h2 = self.h2
        if not h2.out:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(h2.data_to_send())
        else:
            h2.out.clear()

    def goaway(self) -> None:
        """Tells the client that no new calls are taken; the ones running go on."""
        self.h2.goaway()
        self._schedule_flush()
        self.closing = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.closing and not self.h2.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _path(call: Call) -> str:
    for name, value in call.metadata:
        if name == b":path":
            return value.decode("latin-1")
    return "?"


class _Registry:
    """Stands in for a grpc server while generated ``add_*_to_server`` functions register."""

    def __init__(self) -> None:
        self.handlers: dict[bytes, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[object]) -> None:
        pass  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}".encode()] = handler


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class WireServer:
    """Listens on one address and serves the registered servicers' methods."""

    def __init__(self, max_receive: int, limits: Limits | None = None) -> None:
        self.max_receive = max_receive
        self.stream_window = min(MAX_WINDOW, max(STREAM_WINDOW, max_receive + FRAME_SIZE))
        self.limits = limits = limits or Limits()
        self.h2_config = H2Config(
            stream_window=self.stream_window,
            connection_window=CONNECTION_WINDOW,
            max_concurrent_streams=limits.max_concurrent_streams,
            max_header_list_size=limits.max_header_list_size,
            max_header_block=MAX_HEADER_BLOCK,
            ping_min_time=limits.keepalive_min_time,
            header_fields_per_second=limits.header_fields_per_second,
            header_fields_burst=limits.header_fields_per_second,
        )
        self.registry = _Registry()
        self.handlers = self.registry.handlers
        self.connections: set[Connection] = set()
        self.servers: list[Listener] = []
        self.connection_factory: Callable[[], asyncio.Protocol] = lambda: Connection(self)
        # For /metrics: plain counts, one dict update per call, read when scraped.
        self.calls_started: dict[Any, int] = {}
        """Calls started, by handler."""
        self.calls_handled: dict[tuple[Any, grpc.StatusCode], int] = {}
        """Calls ended, by handler and status."""
        self.bytes_received = 0
        self.bytes_sent = 0
        """What serves an accepted connection; the store puts its HTTP/1.1 sniffer here."""

    def unknown(self, path: str) -> tuple[grpc.StatusCode, str]:
        """The status for a method not served, worded as etcd's gRPC (grpc-go) words it."""
        name = path[1:] if path.startswith("/") else path
        service, slash, method = name.rpartition("/")
        if not slash:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f'malformed method name: "{path}"'
        if f"/{service}/".encode() in self.services:
            return grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method} for service {service}"
        return grpc.StatusCode.UNIMPLEMENTED, f"unknown service {service}"

    @property
    def services(self) -> set[bytes]:
        return {path[: path.rindex(b"/") + 1] for path in self.handlers}

    def add(self, register: Callable[[Any, Any], None], servicer: object) -> None:
        """``add(rpc_pb2_grpc.add_KVServicer_to_server, KVService(...))``."""
        register(servicer, self.registry)

    async def listen(self, address: str, ssl_context: ssl.SSLContext | None = None) -> int:
        host, port = split_address(address)
        listener = Listener(self, ssl_context)
        port = listener.bind(host or None, port)
        self.servers.append(listener)
        return port

    def close(self) -> None:
        """Stops listening and tells every client that no new calls are taken."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.goaway()

    async def stop(self, grace: float) -> None:
        """``close``, then gives running calls ``grace`` seconds before cutting them off."""
        self.close()
        if self.connections:
            await asyncio.wait([conn.closed for conn in self.connections], timeout=grace)
        for conn in list(self.connections):
            conn.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


ACCEPTS_PER_PASS = 64
_OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class Listener:
    """Accepts connections on the listening sockets of one address, as Go's server does.

    At the descriptor limit (EMFILE), uvloop's libuv would accept each waiting connection and
    close it at once; asyncio's selector loop waits a second. Here, as in grpc-go, the
    listener stops watching its sockets and retries after 5 ms, doubling to 1 s: the
    connections already open keep being served, new ones wait in the kernel's backlog and are
    taken once descriptors free up, and nothing spins.
    """

    def __init__(self, server: WireServer, ssl_context: ssl.SSLContext | None) -> None:
        self.server = server
        self.ssl_context = ssl_context
        self.loop = asyncio.get_running_loop()
        self.sockets: list[socket.socket] = []
        self.backoff = 0.0
        self.warned = -1e9
        self.retry: asyncio.TimerHandle | None = None
        self.starting: set[asyncio.Task[Any]] = set()
        self.closed = False

    def bind(self, host: str | None, port: int) -> int:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        seen = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(self.sockets) > 1:  # every address on the same port
                    address = (address[0], self.sockets[0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(socket.SOMAXCONN)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            raise
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)
        return int(self.sockets[0].getsockname()[1])

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_PASS):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(error)
                    return
                if error.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client gave up before we took it
                self._pause(error)  # anything else: back off too, never spin
                return
            self.backoff = 0.0
            conn.setblocking(False)
            task = self.loop.create_task(self._serve(conn))
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.server.connection_factory, conn, ssl=self.ssl_context
            )
        except Exception as error:  # a failed TLS handshake, a client gone: that one only
            log.debug("connection not started: %s", error)
            conn.close()

    def _pause(self, error: OSError) -> None:
        now = self.loop.time()
        if now - self.warned > 60:
            self.warned = now
            log.warning("accept: %s; retrying while the connections open are served", error)
        self.backoff = min(1.0, max(0.005, self.backoff * 2))
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
        self.retry = self.loop.call_later(self.backoff, self._resume)

    def _resume(self) -> None:
        self.retry = None
        if self.closed:
            return
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.retry is not None:
            self.retry.cancel()
        for sock in self.sockets:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        if self.starting:
            await asyncio.wait(list(self.starting), timeout=1.0)


def server_ssl_context(
    cert_file: str, key_file: str, trusted_ca_file: str | None, client_cert_auth: bool
) -> ssl.SSLContext:
    """TLS as gRPC needs it: TLS 1.2 or later, HTTP/2 chosen by ALPN (or HTTP/1.1, for the
    store's HTTP side, as etcd offers both)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if trusted_ca_file:
        context.load_verify_locations(trusted_ca_file)
    if client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


__all__ = ["Abort", "AsyncIterator", "Context", "Limits", "WireServer", "server_ssl_context"]
