"""Serves gRPC over HTTP/2 on asyncio: the part of the protocol that etcd's clients use.

Why not grpc.aio: measured on this project's machines, a grpc.aio servicer that does nothing
costs about 300 µs of CPU per call (grpc.aio on uvloop 293 µs, the threaded server 292 µs),
twenty times what the store itself spends on a put. This module costs a few tens of µs: one
asyncio Protocol per connection parses HTTP/2 frames, decodes request headers with HPACK,
hands whole gRPC messages to the same servicer classes grpc.aio would run, and writes the
responses of everything that finished in one loop iteration with one system call.

What it speaks (RFC 9113 and gRPC's PROTOCOL-HTTP2): the client preface and SETTINGS, DATA
and HEADERS with CONTINUATION and padding, RST_STREAM, PING, GOAWAY and WINDOW_UPDATE, with
flow control in both directions; unary and streaming calls; status and message in trailers,
or trailers-only when a call fails before answering. What it does not: server push (a server
never pushes), compression (refused with etcd's own error, since etcd installs no
decompressor either) and deadlines (the client enforces its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import hpack

log = logging.getLogger("clusterd.kv.wire")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, CANCEL, COMPRESSION_ERROR = 5, 6, 8, 9
# Settings.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384
"""The largest frame this server accepts (HTTP/2's default) and the default it sends."""
STREAM_WINDOW = 4 * 1024 * 1024
"""How much each stream may send before we have read it: at least a whole request, so a
unary call never waits for a WINDOW_UPDATE (the server raises it for larger limits)."""
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_HEADER_BLOCK = 64 * 1024
"""A request's header block may not grow beyond this across CONTINUATION frames."""

_FRAME = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream id
_SETTING = struct.Struct(">HL")
_PREFIX = struct.Struct(">BL")  # gRPC message: compressed flag, length

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    length = len(payload)
    return _FRAME.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the peer's dynamic table (no state to keep)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


# :status 200 is static entry 8; content-type is static name 31, sent without indexing.
_RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4, 0) + _hpack_int(16, 7, 0) + b"application/grpc"
_OK_TRAILERS = _literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as is, every other byte as %XX."""
    out = bytearray()
    for byte in message.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def _status_block(code: grpc.StatusCode, message: str) -> bytes:
    if code is grpc.StatusCode.OK and not message:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message[:4096]))
    return block


class Abort(Exception):
    """Ends a call with a status; raised by ``Context.abort``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Context:
    """What a servicer method gets besides its request: the grpc.aio calls the servicers use."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: object) -> None:
        raise Abort(code, details)

    async def write(self, message: Any) -> None:
        """Sends one response of a streaming call; ``bytes`` are sent as already serialized."""
        stream = self._stream
        await stream.conn.send_message(stream, self._body(message))

    def try_write(self, message: Any) -> bool:
        """Sends one response of a streaming call now, if nothing waits to go before it.

        False when the client is behind (flow control or a full socket buffer): the
        caller then queues the message and sends it with ``write``, which waits.
        """
        stream = self._stream
        conn = stream.conn
        if stream.pending or stream.reset or stream.finished or conn.paused:
            return False
        conn.send_message_now(stream, self._body(message))
        return True

    def _body(self, message: Any) -> bytes:
        """A response serialized, unless it already is."""
        if isinstance(message, bytes):
            return message
        return self._stream.handler.response_serializer(message)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._stream.metadata
            if not name.startswith(b":")
        )

    def peer(self) -> str:
        return self._stream.conn.peer

    def cancelled(self) -> bool:
        return self._stream.reset

    def done(self) -> bool:
        return self._stream.finished


class Inbox:
    """A streaming call's requests, as the async iterator its servicer reads."""

    __slots__ = ("closed", "items", "stream", "waiter")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
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
        self.stream.conn.consumed(self.stream, size)
        return request


class Stream:
    """One call: its handler, what has arrived of its request, and what waits to be sent."""

    __slots__ = (
        "conn",
        "drained",
        "finished",
        "handler",
        "headers_sent",
        "id",
        "inbox",
        "message",
        "metadata",
        "pending",
        "recv_window",
        "remote_closed",
        "reset",
        "started",
        "task",
        "trailers",
        "window",
    )

    def __init__(self, conn: Connection, stream_id: int, window: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.window = window
        self.recv_window = conn.server.stream_window
        self.handler: Any = None
        self.metadata: list[tuple[bytes, bytes]] = []
        self.message = bytearray()
        self.inbox: Inbox | None = None
        self.task: asyncio.Future[None] | None = None
        self.started = False
        self.headers_sent = False
        self.remote_closed = False
        self.finished = False
        self.reset = False
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.drained: asyncio.Future[None] | None = None


class Connection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched, frames out."""

    def __init__(self, server: WireServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        """Header blocks of indexed fields only, decoded, while the dynamic table holds."""
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self.send_window = DEFAULT_WINDOW
        self.peer_stream_window = DEFAULT_WINDOW
        self.peer_frame_size = FRAME_SIZE
        self.recv_unacked = 0
        self.recv_window = CONNECTION_WINDOW
        """What the client may still send before our next WINDOW_UPDATE."""
        self.blocked: dict[int, Stream] = {}
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None
        self.closing = False
        self.failed = False
        self.closed: asyncio.Future[None] = self.loop.create_future()

    # -- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
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
        settings = _SETTING.pack(S_ENABLE_PUSH, 0) + _SETTING.pack(
            S_INITIAL_WINDOW_SIZE, self.server.stream_window
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if not self.closed.done():
            self.closed.set_result(None)
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.blocked.clear()
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        # The transport refers to us: drop our side, so no cycle outlives the connection.
        self.transport = None

    def pause_writing(self) -> None:
        # The client is not reading what we send: stop reading what it sends until it does,
        # so a flood of requests or pings whose answers pile up cannot grow our memory.
        self.paused = True
        with contextlib.suppress(Exception):
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.paused = False
        with contextlib.suppress(Exception):
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 client")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 client")
                return
            del buffer[: len(PREFACE)]
            self.preface = True
        offset = 0
        size = len(buffer)
        unpack = _FRAME.unpack_from
        try:
            # Not ``closing``: after a GOAWAY either way the running calls still need the
            # client's WINDOW_UPDATEs, RST_STREAMs and request DATA.
            while size - offset >= 9 and not self.failed:
                high, low, kind, flags, stream_id = unpack(buffer, offset)
                length = (high << 16) | low
                if length > FRAME_SIZE:
                    self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                    return
                end = offset + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[offset + 9 : end])
                offset = end
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        except _ConnectionError as error:
            self._fail(error.code, str(error))
            return
        del buffer[:offset]

    # -- frames

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad PING")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad RST_STREAM")
            if stream_id == 0 or stream_id > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.reset = True
                self.blocked.pop(stream_id, None)
                self._cancel(stream)
                self._maybe_close()
        elif kind == GOAWAY:
            self.closing = True  # the client opens no more streams; ours run to their end
            self._maybe_close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as HTTP/2 says.

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for index in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, index)
            if setting == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self.peer_stream_window
                self.peer_stream_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif setting == S_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_frame_size = value
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.window += increment
        if stream.window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending or stream.trailers is not None:
            self._flush_stream(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on an invalid stream")
        payload = _unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & END_HEADERS:
            self.continuing = (stream_id, flags, bytearray(payload))
            return
        self._header_block(stream_id, flags, payload)

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.continuing[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            first_flags = self.continuing[1]
            self.continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & END_STREAM:
                self._remote_closed(stream)
            return
        if stream_id <= self.last_stream:
            raise _ConnectionError(STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_stream = stream_id
        if self.closing:
            self._write(frame(RST_STREAM, 0, stream_id, b"\x00\x00\x00\x07"))  # REFUSED_STREAM
            return
        stream = Stream(self, stream_id, self.peer_stream_window)
        self.streams[stream_id] = stream
        stream.metadata = headers
        path = b""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"grpc-encoding":
                if value != b"identity":  # as etcd: no decompressors
                    self._finish(
                        stream,
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"grpc: Decompressor is not installed for grpc-encoding "
                        f'"{value.decode("latin-1")}"',
                    )
                    return

        handler = self.server.handlers.get(path)
        if handler is None:
            self._finish(stream, *self.server.unknown(path.decode("latin-1")))
            return
        stream.handler = handler
        if handler.request_streaming:
            stream.inbox = Inbox(stream)
            self._start(stream, stream.inbox)
        if flags & END_STREAM:
            self._remote_closed(stream)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """A header block decoded; a repeated block of indexed fields only, from a cache.

        A client repeating a call sends the same few bytes each time, every field a
        one-byte reference to an entry of the tables (bytes 0x80 and up). Such a block
        changes no table, so its meaning holds until a block that may change the dynamic
        table arrives, which empties the cache. Decoding costs 20-30 µs in hpack; this, one.
        """
        cacheable = bool(block) and min(block) >= 0x80
        if cacheable:
            headers = self.decoded.get(block)
            if headers is not None:
                return headers
        else:
            self.decoded.clear()
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as error:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {error}") from error
        if cacheable and len(self.decoded) < 256:
            self.decoded[block] = headers
        return headers

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)
        if length:
            self.recv_window -= length
            if self.recv_window < 0:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
            self.recv_unacked += length
            if self.recv_unacked >= CONNECTION_WINDOW // 2:
                self._write(frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
                self.recv_window += self.recv_unacked
                self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we have finished or reset: its data is dropped
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        payload = _unpad(flags, payload)
        if stream.inbox is not None and len(payload) < length:
            self.consumed(stream, length - len(payload))  # padding is read at once
        if flags & END_STREAM:
            # Half-closed before the handler runs: a call answered at once then ends
            # cleanly, without a RST_STREAM telling the client to stop sending.
            stream.remote_closed = True
        if stream.handler is not None and not stream.finished:
            self._messages(stream, payload)
        if flags & END_STREAM:
            self._remote_closed(stream)

    def _messages(self, stream: Stream, payload: bytes) -> None:
        """Whole gRPC messages out of the stream's bytes, to its handler."""
        buffered = stream.message
        if buffered:
            buffered += payload
            data: bytes | bytearray = buffered
        else:
            data = payload
        limit = self.server.max_receive
        handler = stream.handler
        offset = 0
        total = len(data)
        while total - offset >= 5:
            compressed, size = _PREFIX.unpack_from(data, offset)
            if size > limit:
                self._finish(
                    stream,
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
                    stream,
                    grpc.StatusCode.INTERNAL,
                    "grpc: compressed flag set with identity or empty encoding",
                )
                return
            try:
                request = handler.request_deserializer(body)
            except Exception:  # protobuf raises DecodeError, and others
                self._finish(stream, grpc.StatusCode.INTERNAL, "error deserializing the request")
                return
            if stream.inbox is not None:
                stream.inbox.put(request, size + 5)
            elif stream.started:
                self._finish(stream, grpc.StatusCode.UNIMPLEMENTED, "more than one request")
                return
            else:
                self._start(stream, request)
        if offset < total:
            if data is buffered:
                del buffered[:offset]
            else:
                stream.message = bytearray(data[offset:])
        elif buffered:
            buffered.clear()
        # A unary request fits its stream's window whole (see STREAM_WINDOW): no update.

    def consumed(self, stream: Stream, size: int) -> None:
        if not stream.remote_closed and not stream.finished and size:
            stream.recv_window += size
            self._write(frame(WINDOW_UPDATE, 0, stream.id, size.to_bytes(4, "big")))

    def _remote_closed(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.inbox is not None:
            stream.inbox.close()
        elif not stream.started and not stream.finished:
            self._finish(stream, grpc.StatusCode.INTERNAL, "the call carried no request")
            return
        if stream.finished and stream.trailers is None and not stream.pending:
            self.streams.pop(stream.id, None)

    # -- calls

    def _start(self, stream: Stream, request: Any) -> None:
        stream.started = True
        handler = stream.handler
        if handler.request_streaming or handler.response_streaming:
            stream.task = asyncio.ensure_future(self._run(stream, request))
        else:
            self._step(stream, handler.unary_unary(request, Context(stream)))

    def _step(self, stream: Stream, coro: Any, _done: object = None) -> None:
        """Runs a unary handler's coroutine to its next wait, as a Task would, but inline.

        Most calls finish without waiting (a read) or wait once (a write waits for the disk),
        and a Task costs a loop pass before it starts. A handler here may await futures and
        coroutines; it must not need ``asyncio.current_task()``.
        """
        try:
            waited = coro.send(None)
        except StopIteration as stop:
            if not stream.reset:
                body = stream.handler.response_serializer(stop.value)
                self.send_message_now(stream, body)
                self._finish(stream, grpc.StatusCode.OK, "")
            return
        except Abort as abort:
            self._finish(stream, abort.code, abort.message)
            return
        except asyncio.CancelledError:
            self._finish(stream, grpc.StatusCode.CANCELLED, "cancelled")
            return
        except Exception as error:
            log.exception("%s failed", _path(stream))
            self._finish(
                stream, grpc.StatusCode.UNKNOWN, f"Unexpected {type(error).__name__}: {error}"
            )
            return
        if waited is None:  # a bare yield, as asyncio.sleep(0) does
            self.loop.call_soon(self._step, stream, coro)
        elif getattr(waited, "_asyncio_future_blocking", False):
            waited._asyncio_future_blocking = False
            waited.add_done_callback(functools.partial(self._step, stream, coro))
        else:
            coro.close()
            raise RuntimeError(f"{_path(stream)}: a handler yielded {waited!r}")

    async def _run(self, stream: Stream, request: Any) -> None:
        handler = stream.handler
        context = Context(stream)
        code, message = grpc.StatusCode.OK, ""
        try:
            if handler.response_streaming:
                call = handler.stream_stream if handler.request_streaming else handler.unary_stream
                result = call(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        await self.send_message(stream, handler.response_serializer(response))
                else:
                    await result
            else:  # unary calls never get here: _step drives them
                response = await handler.stream_unary(request, context)
                if not stream.reset:
                    self.send_message_now(stream, handler.response_serializer(response))
        except Abort as abort:
            code, message = abort.code, abort.message
        except asyncio.CancelledError:
            if not stream.reset and not self.closing:
                raise
            return
        except Exception as error:
            log.exception("%s failed", stream.metadata and _path(stream))
            code, message = grpc.StatusCode.UNKNOWN, f"Unexpected {type(error).__name__}: {error}"
        self._finish(stream, code, message)

    def send_message_now(self, stream: Stream, body: bytes) -> None:
        """Queues one response message, within flow control, without waiting."""
        if stream.reset or stream.finished or self.transport is None:
            return
        data = _PREFIX.pack(0, len(body)) + body
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(frame(HEADERS, END_HEADERS, stream.id, _RESPONSE_HEADERS))
        if stream.pending:
            stream.pending += data
            return
        allowed = min(self.send_window, stream.window)
        if len(data) <= allowed and len(data) <= self.peer_frame_size:
            self.send_window -= len(data)
            stream.window -= len(data)
            self._write(frame(DATA, 0, stream.id, data))
            return
        stream.pending += data
        self._flush_stream(stream)

    async def send_message(self, stream: Stream, body: bytes) -> None:
        """Sends one message of a streaming response, waiting while the client is not reading."""
        if stream.reset or self.transport is None:
            raise asyncio.CancelledError
        self.send_message_now(stream, body)
        while stream.pending and not stream.reset:
            if stream.drained is None:
                stream.drained = self.loop.create_future()
            await stream.drained
        if self.paused and self.transport is not None and not self.transport.is_closing():
            if self.resumed is None:
                self.resumed = self.loop.create_future()
            await self.resumed
        if stream.reset:
            raise asyncio.CancelledError

    def _finish(self, stream: Stream, code: grpc.StatusCode, message: str) -> None:
        if stream.finished or stream.reset:
            return
        stream.finished = True
        if stream.inbox is not None:
            stream.inbox.close()
        status = _status_block(code, message)
        if stream.headers_sent:
            trailers = frame(HEADERS, END_STREAM | END_HEADERS, stream.id, status)
        else:
            stream.headers_sent = True
            trailers = frame(
                HEADERS, END_STREAM | END_HEADERS, stream.id, _RESPONSE_HEADERS + status
            )
        if stream.pending:
            stream.trailers = trailers
        else:
            self._write_now(trailers)
            self._closed_local(stream)
        self._maybe_close()

    def _closed_local(self, stream: Stream) -> None:
        if stream.remote_closed:
            self.streams.pop(stream.id, None)
        else:
            # The client is still sending (a stream it has not half-closed): tell it to stop.
            self._write(frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
            self.streams.pop(stream.id, None)
        if stream.task is not None and not stream.task.done() and stream.inbox is not None:
            stream.inbox.close()
        self._maybe_close()

    def _reset(self, stream: Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self.streams.pop(stream.id, None)
        stream.reset = True
        self._cancel(stream)

    def _cancel(self, stream: Stream) -> None:
        stream.reset = True
        if stream.inbox is not None:
            stream.inbox.close()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.drained is not None and not stream.drained.done():
            stream.drained.set_result(None)

    # -- flow control and output

    def _flush_stream(self, stream: Stream) -> None:
        pending = stream.pending
        frame_size = self.peer_frame_size
        while pending:
            allowed = min(self.send_window, stream.window, frame_size)
            if allowed <= 0:
                self.blocked[stream.id] = stream
                return
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            self.send_window -= len(chunk)
            stream.window -= len(chunk)
            self._write(frame(DATA, 0, stream.id, chunk))
        self.blocked.pop(stream.id, None)
        if stream.trailers is not None:
            self._write(stream.trailers)
            stream.trailers = None
            self._closed_local(stream)
        if stream.drained is not None and not stream.drained.done():
            stream.drained.set_result(None)
        stream.drained = None

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._flush_stream(stream)

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _write_now(self, data: bytes) -> None:
        """Ends a call's output: sent at once when it is the connection's only call.

        With more calls running, the output of all that finish in this loop pass is
        gathered into one write; a lone call should not wait a loop pass for company.
        """
        self.out.append(data)
        if len(self.streams) <= 1:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()

    def _fail(self, code: int, reason: str) -> None:
        log.debug("closing connection from %s: %s", self.peer, reason)
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.write(
                frame(
                    GOAWAY,
                    0,
                    0,
                    self.last_stream.to_bytes(4, "big")
                    + code.to_bytes(4, "big")
                    + reason.encode()[:256],
                )
            )
            self.transport.close()
        self.closing = True
        self.failed = True

    def goaway(self) -> None:
        """Tells the client that no new calls are taken; the ones running go on."""
        if self.transport is not None and not self.transport.is_closing():
            self._write(frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + bytes(4)))
        self.closing = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.closing and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - payload[0]]


def _path(stream: Stream) -> str:
    for name, value in stream.metadata:
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

    def __init__(self, max_receive: int) -> None:
        self.max_receive = max_receive
        self.stream_window = min(MAX_WINDOW, max(STREAM_WINDOW, max_receive + FRAME_SIZE))
        self.registry = _Registry()
        self.handlers = self.registry.handlers
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.Server] = []

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
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(self), host or None, port, ssl=ssl_context, reuse_address=True
        )
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

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


def server_ssl_context(
    cert_file: str, key_file: str, trusted_ca_file: str | None, client_cert_auth: bool
) -> ssl.SSLContext:
    """TLS as gRPC needs it: TLS 1.2 or later, and HTTP/2 chosen by ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    if trusted_ca_file:
        context.load_verify_locations(trusted_ca_file)
    if client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


__all__ = ["Abort", "AsyncIterator", "Context", "WireServer", "server_ssl_context"]
