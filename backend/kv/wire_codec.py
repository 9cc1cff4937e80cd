"""HTTP/2 frames and HPACK, as the bundled store's wire layer reads and writes them.

Pure functions and constants: no state but the HPACK decoder's, no I/O. The connection state
machine (``wire_conn``) parses frames with ``FRAME_HEADER`` and builds them with ``frame``;
the responses' header blocks are literals that never touch the client's dynamic table.
"""

from __future__ import annotations

import struct
from typing import cast

import grpc
import hpack

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
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 4, 5, 6, 7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 8, 9, 10, 11
# Settings.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384
"""The largest frame this server accepts (HTTP/2's default) and the default it sends."""

FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream id
SETTING = struct.Struct(">HL")
MESSAGE_PREFIX = struct.Struct(">BL")  # gRPC message: compressed flag, length


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in settings.items()))


def goaway_frame(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


def rst_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
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


def literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the peer's dynamic table (no state to keep)."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


# :status 200 is static entry 8; content-type is static name 31, sent without indexing.
RESPONSE_HEADERS = b"\x88" + hpack_int(31, 4, 0) + hpack_int(16, 7, 0) + b"application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")


def percent_encode(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as is, every other byte as %XX."""
    out = bytearray()
    for byte in message.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_block(code: grpc.StatusCode, message: str) -> bytes:
    """The trailers that end a call with ``code`` and ``message``."""
    if code is grpc.StatusCode.OK and not message:
        return OK_TRAILERS
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message[:4096]))
    return block


class HPACKError(Exception):
    """A header block that cannot be decoded, or that breaks the decoder's limits."""


class HeaderDecoder:
    """HPACK decoding with a bounded cache and a decoding budget.

    A client repeating a call sends the same few bytes each time, every field a one-byte
    reference to an entry of the tables (bytes 0x80 and up). Such a block changes no table, so
    its meaning holds until a block that may change the dynamic table arrives, which empties
    the cache. Decoding costs 20-30 µs in hpack; a cached block, one. The cache holds at most
    ``CACHE_ENTRIES`` blocks of at most ``CACHE_BLOCK`` bytes each.

    Every field decoded outside the cache beyond a request's usual few is charged to ``debt``
    (plus one per 256 bytes of block): the connection pays it back at its budget's rate, so a
    client sending distinct header blocks gets a bounded share of the CPU, however it builds
    them, while a client whose every call carries a new grpc-timeout value pays nothing.
    """

    CACHE_ENTRIES = 256
    CACHE_BLOCK = 512
    FREE_FIELDS = 16
    """Fields of a block not charged: a gRPC request has about ten."""

    __slots__ = ("cache", "debt", "decoder")

    def __init__(self, max_header_list_size: int) -> None:
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = max_header_list_size
        self.cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self.debt = 0

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        cacheable = bool(block) and len(block) <= self.CACHE_BLOCK and min(block) >= 0x80
        cache = self.cache
        if cacheable:
            cached = cache.get(block)
            if cached is not None:
                return cached
        elif block and min(block) < 0x80:
            cache.clear()
        try:
            # hpack hints an Iterable of str or bytes pairs; raw=True returns a list of bytes.
            headers = cast("list[tuple[bytes, bytes]]", self.decoder.decode(block, raw=True))
        except hpack.HPACKError as error:
            raise HPACKError(str(error) or type(error).__name__) from error
        self.debt += max(0, len(headers) - self.FREE_FIELDS) + (len(block) >> 8)
        if cacheable and len(cache) < self.CACHE_ENTRIES:
            cache[block] = headers
        return headers
