"""The HTTP/2 connection of the bundled store as a state machine: bytes in, frames and events out.

No sockets, no event loop, no clock of its own (the caller passes ``now``): the gRPC layer
(``wire``) feeds it what the socket read, acts on the events it returns, and writes what it
queued in ``out``. Tests drive it the same way, in memory.

Every frame costs a bounded amount, whatever the number of streams: a change of the client's
INITIAL_WINDOW_SIZE moves every stream's send window at once because a window is kept as the
connection's initial window plus the stream's own credit; header blocks are decoded against a
budget (``HeaderDecoder``); ``process`` handles at most ``max_frames`` frames per call. The
client's streams are limited (SETTINGS_MAX_CONCURRENT_STREAMS, advertised; excess streams are
refused with REFUSED_STREAM), as are its header lists (SETTINGS_MAX_HEADER_LIST_SIZE) and its
pings (grpc-go's keepalive enforcement, as etcd configures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clustertui.backend.kv.wire_codec import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    HeaderDecoder,
    HPACKError,
    frame,
    goaway_frame,
    rst_frame,
    settings_frame,
)

# Events, as tuples whose first item is one of these.
REQUEST = 1
"""(REQUEST, stream, headers, end_stream): a new stream's request headers, validated."""
BODY = 2
"""(BODY, stream, data, flow_length, end_stream): request bytes (``data`` may be empty)."""
RESET = 3
"""(RESET, stream): the stream ended abnormally (the client reset it, or broke its rules)."""
DRAINED = 4
"""(DRAINED, stream): everything queued on the stream went out (its trailers too, if given)."""
GOAWAY_RECEIVED = 5
"""(GOAWAY_RECEIVED,): the client opens no more streams."""
TERMINATED = 6
"""(TERMINATED, code, reason): the connection failed; its GOAWAY is queued; close it."""

_CONNECTION_HEADERS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_IDLE_PING_INTERVAL = 2 * 3600.0
"""grpc-go's ``defaultPingTimeout``: pings without streams, unless permitted, at most this often."""
MAX_PING_STRIKES = 2
"""grpc-go's ``maxPingStrikes``: pings beyond the policy tolerated before GOAWAY."""


@dataclass
class H2Config:
    """The limits one connection enforces (see LIMITS.md for each, its flag and etcd's)."""

    stream_window: int = 4 * 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 * 1024
    max_header_block: int = 64 * 1024
    ping_min_time: float = 5.0
    ping_permit_without_stream: bool = False
    header_fields_per_second: float = 10_000.0
    """HPACK budget: header fields decoded outside the cache (see ``HeaderDecoder``)."""
    header_fields_burst: float = 10_000.0
    header_fields_per_pass: int = 1_000
    """A pass over the input ends once it has decoded this many (charged) fields."""


class ConnectionError_(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class H2Stream:
    """One stream's HTTP/2 state; ``call`` is the gRPC layer's own record of it."""

    __slots__ = (
        "call",
        "content_length",
        "credit",
        "headers_sent",
        "id",
        "pending",
        "received",
        "recv_window",
        "remote_closed",
        "reset",
        "trailers",
    )

    def __init__(self, stream_id: int, recv_window: int) -> None:
        self.id = stream_id
        self.credit = 0
        """The send window minus the client's initial window (WINDOW_UPDATEs less DATA sent)."""
        self.recv_window = recv_window
        self.call: Any = None
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.headers_sent = False
        self.remote_closed = False
        self.reset = False
        self.content_length = -1
        self.received = 0


class H2Connection:
    """The server side of one HTTP/2 connection."""

    def __init__(self, config: H2Config, now: float = 0.0) -> None:
        self.config = config
        self.buffer = bytearray()
        self.preface = False
        """True once the client preface and its SETTINGS frame arrived."""
        self.magic = False
        self.decoder = HeaderDecoder(config.max_header_list_size)
        self.budget = config.header_fields_burst
        self.budget_at = now
        self.resume_at = 0.0
        """While ``now`` is before this, ``process`` handles nothing: the HPACK budget is spent."""
        self.streams: dict[int, H2Stream] = {}
        self.last_stream = 0
        self.continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_frame_size = FRAME_SIZE
        self.recv_unacked = 0
        self.recv_window = config.connection_window
        """What the client may still send before our next WINDOW_UPDATE."""
        self.blocked: dict[int, H2Stream] = {}
        self.out: list[bytes] = []
        self.closing = False
        self.failed = False
        self.ping_strikes = 0
        self.answered = False
        """HEADERS or DATA went out since the last ping (grpc-go's ``resetPingStrikes``)."""
        self.last_ping = -1e18
        self.events: list[tuple[Any, ...]] = []
        self.valid: dict[int, tuple[list[tuple[bytes, bytes]], int | None]] = {}
        """Validation of decoded header lists, by identity: a cached block is checked once."""
        self.out.append(
            settings_frame(
                {
                    S_ENABLE_PUSH: 0,
                    S_MAX_CONCURRENT_STREAMS: config.max_concurrent_streams,
                    S_INITIAL_WINDOW_SIZE: config.stream_window,
                    S_MAX_HEADER_LIST_SIZE: config.max_header_list_size,
                }
            )
            + frame(
                WINDOW_UPDATE,
                0,
                0,
                (config.connection_window - DEFAULT_WINDOW).to_bytes(4, "big"),
            )
        )

    # -- input

    def receive(self, data: bytes) -> None:
        """Bytes read from the socket; ``process`` turns them into events."""
        self.buffer += data

    @property
    def has_input(self) -> bool:
        """Whether ``process`` has complete frames (or the preface) left to handle."""
        buffer = self.buffer
        if self.failed:
            return False
        if not self.magic:
            return len(buffer) >= len(PREFACE) or not PREFACE.startswith(bytes(buffer))
        if len(buffer) < 9:
            return False
        high, low = buffer[0], int.from_bytes(buffer[1:3], "big")
        return len(buffer) >= 9 + ((high << 16) | low)

    def process(self, now: float, max_frames: int = 1 << 30) -> list[tuple[Any, ...]]:
        """Handles up to ``max_frames`` buffered frames; returns the events they caused."""
        events = self.events = []
        if self.failed or now < self.resume_at:
            return events
        buffer = self.buffer
        if not self.magic:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self.fail(PROTOCOL_ERROR, "not an HTTP/2 client")
                return events
            if buffer[: len(PREFACE)] != PREFACE:
                self.fail(PROTOCOL_ERROR, "not an HTTP/2 client")
                return events
            del buffer[: len(PREFACE)]
            self.magic = True
        offset = 0
        size = len(buffer)
        unpack = FRAME_HEADER.unpack_from
        decoder = self.decoder
        handled = spent = 0
        fields_per_pass = self.config.header_fields_per_pass
        preface = self.preface
        frame_ = self._frame
        try:
            # Not ``closing``: after a GOAWAY either way the running calls still need the
            # client's WINDOW_UPDATEs, RST_STREAMs and request DATA.
            while size - offset >= 9 and handled < max_frames:
                high, low, kind, flags, stream_id = unpack(buffer, offset)
                length = (high << 16) | low
                if length > FRAME_SIZE:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = offset + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[offset + 9 : end])
                offset = end
                handled += 1
                if not preface:
                    if kind != SETTINGS or flags & ACK:
                        raise ConnectionError_(PROTOCOL_ERROR, "the preface lacks SETTINGS")
                    self.preface = preface = True
                frame_(kind, flags, stream_id & 0x7FFFFFFF, payload, now)
                if decoder.debt:
                    spent += decoder.debt
                    self._charge(now)
                    if self.resume_at > now or spent >= fields_per_pass:
                        break
        except ConnectionError_ as error:
            self.fail(error.code, str(error))
            return events
        del buffer[:offset]
        return events

    def _charge(self, now: float) -> None:
        """Takes the decoder's debt out of the HPACK budget, refilled at its rate."""
        config = self.config
        rate = config.header_fields_per_second
        budget = min(config.header_fields_burst, self.budget + (now - self.budget_at) * rate)
        budget -= self.decoder.debt
        self.decoder.debt = 0
        self.budget = budget
        self.budget_at = now
        if budget < 0:
            self.resume_at = now - budget / rate

    # -- frames

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, now: float) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "bad PING")
            if not flags & ACK:
                self._ping(now)
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "bad RST_STREAM")
            if stream_id > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.reset = True
                self.blocked.pop(stream_id, None)
                self.events.append((RESET, stream))
        elif kind == GOAWAY:
            if stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.closing = True  # the client opens no more streams; ours run to their end
            self.events.append((GOAWAY_RECEIVED,))
        elif kind == PRIORITY:
            if stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(stream_id, FRAME_SIZE_ERROR)
            elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
                self._stream_error(stream_id, PROTOCOL_ERROR)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client may not push")
        # Unknown frame types are ignored, as HTTP/2 says.

    def _ping(self, now: float) -> None:
        """grpc-go's keepalive enforcement (``handlePing``), with etcd's policy."""
        config = self.config
        last, self.last_ping = self.last_ping, now
        if self.answered:
            self.answered = False
            self.ping_strikes = 0
            return
        if self.streams or config.ping_permit_without_stream:
            too_soon = now - last < config.ping_min_time
        else:
            too_soon = now - last < _IDLE_PING_INTERVAL
        if too_soon:
            self.ping_strikes += 1
            if self.ping_strikes > MAX_PING_STRIKES:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "too_many_pings")

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS length")
        window = -1
        for index in range(0, len(payload), 6):
            setting, value = SETTING.unpack_from(payload, index)
            if setting == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "window too large")
                window = value
            elif setting == S_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_frame_size = value
            elif setting == S_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "bad ENABLE_PUSH")
        self.out.append(frame(SETTINGS, ACK, 0))
        if window >= 0:
            # Once per frame, whatever its number of entries or the number of streams: every
            # stream's window is this plus its own credit.
            grew = window > self.peer_initial_window
            self.peer_initial_window = window
            if grew:
                self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.credit += increment
        if self.peer_initial_window + stream.credit > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending or stream.trailers is not None:
            self._flush_stream(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on an invalid stream")
        payload = _unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "short HEADERS priority")
            depends = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            payload = payload[5:]
            if depends == stream_id:
                flags |= 0x100  # decoded (the table must follow), then the stream refused
        if not flags & END_HEADERS:
            self.continuing = (stream_id, flags, bytearray(payload))
            return
        self._header_block(stream_id, flags, payload)

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.continuing[2]
        block += payload
        if len(block) > self.config.max_header_block:
            raise ConnectionError_(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            first_flags = self.continuing[1]
            self.continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)
        except HPACKError as error:
            raise ConnectionError_(COMPRESSION_ERROR, f"HPACK: {error}") from error
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if stream.remote_closed:
                self._reset(stream, STREAM_CLOSED)
                return
            if flags & 0x100 or not flags & END_STREAM:
                self._reset(stream, PROTOCOL_ERROR)
                return
            for name, _ in headers:
                if name[:1] == b":":
                    self._reset(stream, PROTOCOL_ERROR)
                    return
            self._end_remote(stream)
            return
        if stream_id <= self.last_stream:
            raise ConnectionError_(STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_stream = stream_id
        if flags & 0x100:
            self.out.append(rst_frame(stream_id, PROTOCOL_ERROR))
            return
        if self.closing or len(self.streams) >= self.config.max_concurrent_streams:
            self.out.append(rst_frame(stream_id, REFUSED_STREAM))
            return
        valid = self.valid
        known = valid.get(id(headers))
        if known is not None and known[0] is headers:  # a cached block, checked before
            content_length = known[1]
        else:
            content_length = _validate_request(headers)
            if len(valid) >= 512:
                valid.clear()
            valid[id(headers)] = (headers, content_length)
        if content_length is None:
            self.out.append(rst_frame(stream_id, PROTOCOL_ERROR))
            return
        stream = H2Stream(stream_id, self.config.stream_window)
        stream.content_length = content_length
        self.streams[stream_id] = stream
        end = bool(flags & END_STREAM)
        if end:
            if content_length > 0:
                self._reset(stream, PROTOCOL_ERROR, announce=False)
                return
            stream.remote_closed = True
        self.events.append((REQUEST, stream, headers, end))

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        if length:
            self.recv_window -= length
            if self.recv_window < 0:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            self.acknowledge(length)
            return  # a stream we have finished or reset: its data is dropped
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            self.acknowledge(length)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            self.acknowledge(length)
            return
        payload = _unpad(flags, payload)
        end = bool(flags & END_STREAM)
        if stream.content_length >= 0:
            stream.received += len(payload)
            if stream.received > stream.content_length or (
                end and stream.received != stream.content_length
            ):
                self._reset(stream, PROTOCOL_ERROR)
                self.acknowledge(length)
                return
        if end:
            stream.remote_closed = True
        self.events.append((BODY, stream, payload, length, end))
        if end:
            self._end_remote(stream, announced=True)

    def _end_remote(self, stream: H2Stream, announced: bool = False) -> None:
        stream.remote_closed = True
        if not announced:
            self.events.append((BODY, stream, b"", 0, True))

    # -- output, as the gRPC layer asks

    def send_headers(self, stream: H2Stream, block: bytes, end_stream: bool = False) -> None:
        stream.headers_sent = True
        self.answered = True  # as grpc-go: the next ping is not held against the client
        self.out.append(
            frame(
                HEADERS, (END_STREAM | END_HEADERS) if end_stream else END_HEADERS, stream.id, block
            )
        )

    def send_data(self, stream: H2Stream, data: bytes) -> bool:
        """Queues ``data`` on the stream within flow control; False if some of it must wait."""
        if stream.pending:
            stream.pending += data
            return False
        allowed = self.send_window
        window = self.peer_initial_window + stream.credit
        if window < allowed:
            allowed = window
        if len(data) <= allowed and len(data) <= self.peer_frame_size:
            self.send_window -= len(data)
            stream.credit -= len(data)
            self.answered = True
            self.out.append(frame(DATA, 0, stream.id, data))
            return True
        stream.pending += data
        self._flush_stream(stream, announce=False)
        return not stream.pending

    def end_stream(self, stream: H2Stream, trailers: bytes) -> bool:
        """Ends the stream with a trailers block; False if queued data holds it back."""
        end = frame(HEADERS, END_STREAM | END_HEADERS, stream.id, trailers)
        stream.headers_sent = True
        if stream.pending:
            stream.trailers = end
            return False
        self.out.append(end)
        self._closed_local(stream)
        return True

    def consumed(self, stream: H2Stream, size: int) -> None:
        """The gRPC layer read ``size`` bytes of a streaming call's requests: the client may
        send as many more on the stream (and on the connection: see ``acknowledge``)."""
        if not stream.remote_closed and not stream.reset and size:
            stream.recv_window += size
            self.out.append(frame(WINDOW_UPDATE, 0, stream.id, size.to_bytes(4, "big")))
        self.acknowledge(size)

    def acknowledge(self, size: int) -> None:
        """``size`` bytes of DATA are no longer held: the connection's window reopens by as
        much (in one WINDOW_UPDATE per half window). Every BODY event's ``flow_length`` must
        be acknowledged once its bytes are handed over or dropped, so what the client has
        sent and we hold unread never exceeds the connection window."""
        if size <= 0:
            return
        unacked = self.recv_unacked + size
        if unacked >= self.config.connection_window // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, unacked.to_bytes(4, "big")))
            self.recv_window += unacked
            unacked = 0
        self.recv_unacked = unacked

    def goaway(self) -> None:
        """No new streams; the running ones go on."""
        if not self.closing and not self.failed:
            self.out.append(goaway_frame(self.last_stream, NO_ERROR))
        self.closing = True

    def fail(self, code: int, reason: str) -> None:
        """Ends the connection: GOAWAY with ``code`` queued, TERMINATED among the events."""
        if self.failed:
            return
        self.out.append(goaway_frame(self.last_stream, code, reason.encode()[:256]))
        self.closing = True
        self.failed = True
        self.events.append((TERMINATED, code, reason))

    def data_to_send(self) -> bytes:
        out = self.out
        data = b"".join(out) if len(out) != 1 else out[0]
        out.clear()
        return data

    def window(self, stream: H2Stream) -> int:
        """The stream's send window now."""
        return self.peer_initial_window + stream.credit

    # -- internals

    def _stream_error(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._reset(stream, code)
        else:
            self.out.append(rst_frame(stream_id, code))

    def _reset(self, stream: H2Stream, code: int, announce: bool = True) -> None:
        self.out.append(rst_frame(stream.id, code))
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        stream.reset = True
        if announce:
            self.events.append((RESET, stream))

    def _closed_local(self, stream: H2Stream) -> None:
        if not stream.remote_closed:
            # The client is still sending (a stream it has not half-closed): tell it to stop.
            self.out.append(rst_frame(stream.id, NO_ERROR))
        self.streams.pop(stream.id, None)

    def _flush_stream(self, stream: H2Stream, announce: bool = True) -> None:
        pending = stream.pending
        frame_size = self.peer_frame_size
        initial = self.peer_initial_window
        out = self.out
        while pending:
            allowed = min(self.send_window, initial + stream.credit, frame_size)
            if allowed <= 0:
                # To the back of the line: the window that opens next goes to the streams
                # that waited longest, so one big answer cannot starve the others.
                self.blocked.pop(stream.id, None)
                self.blocked[stream.id] = stream
                return
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            self.send_window -= len(chunk)
            stream.credit -= len(chunk)
            out.append(frame(DATA, 0, stream.id, chunk))
            self.answered = True
        self.blocked.pop(stream.id, None)
        if stream.trailers is not None:
            out.append(stream.trailers)
            stream.trailers = None
            self._closed_local(stream)
        if announce:
            self.events.append((DRAINED, stream))

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._flush_stream(stream)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - payload[0]]


def _validate_request(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's content-length (-1 if none), or None if its headers break RFC 9113 8.2-8.3."""
    seen: set[bytes] = set()
    regular = False
    content_length = -1
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in seen:
                return None
            seen.add(name)
            if name == b":path" and not value:
                return None
            continue
        regular = True
        if name != name.lower() or name in _CONNECTION_HEADERS:
            return None
        if name == b"te" and value != b"trailers":
            return None
        if name == b"content-length":
            if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                return None
            content_length = int(value)
    if b":method" not in seen or b":scheme" not in seen or b":path" not in seen:
        return None
    return content_length
