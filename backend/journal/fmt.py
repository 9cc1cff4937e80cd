"""Provides journalctl's output formats and the one parser for its JSON and ours."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Callable, Iterator

from clustertui.backend.journal import store
from clustertui.backend.journal.store import Record

Value = bytes | None | list[bytes | None]
"""A field's value: bytes; None where journalctl left out a long value; a list when repeated."""
Fields = dict[str, Value]

FORMATS = (
    "short",
    "short-iso",
    "short-precise",
    "verbose",
    "export",
    "json",
    "json-seq",
    "cat",
)

_JSON_ENTRY = (
    b'{"__CURSOR":"s=%s;i=%x;t=%x","__REALTIME_TIMESTAMP":"%d","__MONOTONIC_TIMESTAMP":"%d",'
    b'"__SEQNUM":"%d","__SEQNUM_ID":"%s",%s}\n'
)
# systemd's USEC_TIMESTAMP_FORMATTABLE_MAX: later times are shown as a placeholder.
_FORMATTABLE_MAX = 253_402_214_399_000_000
_SGR = re.compile(rb"\x1b\[[0-9;]*m")
_BYTE_UNITS = (
    ("E", 1 << 60),
    ("P", 1 << 50),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
)


def cursor(journal_id: str, record: Record) -> str:
    """The opaque cursor of ``record``: which journal, which entry, and when (to resume)."""
    return f"s={journal_id};i={record[0]:x};t={record[1]:x}"


def parse_cursor(text: str) -> tuple[str, int | None, int | None]:
    """(journal ID, seqnum, realtime µs) from a cursor; ValueError when it is not one of ours."""
    parts = {}
    for item in text.strip().split(";"):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{text!r} is not a journal cursor")
        parts[name] = value
    try:
        seqnum = int(parts["i"], 16) if "i" in parts else None
        realtime = int(parts["t"], 16) if "t" in parts else None
    except ValueError:
        raise ValueError(f"{text!r} is not a journal cursor") from None
    if seqnum is None and realtime is None:
        raise ValueError(f"{text!r} is not a journal cursor")
    return parts.get("s", ""), seqnum, realtime


# -- parsing -------------------------------------------------------------------------------


def _decode(value: object) -> Value:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value) and value:
            return bytes(value)
        if not value:
            return b""
        return [_decode_single(item) for item in value]
    # journalctl writes every value as a string; tolerate numbers from other producers.
    return str(value).encode()


decode_value = _decode


def _decode_single(value: object) -> bytes | None:
    decoded = _decode(value)
    if isinstance(decoded, list):
        raise ValueError("a repeated field's value cannot itself repeat")
    return decoded


def parse_json(line: bytes | str) -> Fields:
    """One entry of ``-o json`` or ``-o json-seq`` output, journalctl's or ours.

    Strings become their UTF-8 bytes, arrays of byte values become bytes, ``null``
    (a value journalctl left out for being long) stays None, and a field that
    occurs several times becomes a list of its values.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", "surrogateescape")
    doc = json.loads(line.strip().lstrip("\x1e"))
    if not isinstance(doc, dict):
        raise ValueError("a journal entry is a JSON object")
    return {name: _decode(value) for name, value in doc.items()}


def record_fields(record: Record) -> Fields:
    """The stored fields of ``record`` (without the ``__`` addressing fields)."""
    return {name: _decode(value) for name, value in json.loads(b"{" + record[5] + b"}").items()}


def record_pairs(record: Record) -> list[tuple[str, bytes]]:
    """The stored fields of ``record`` in their order, a repeated field once per value."""
    pairs = json.loads(b"{" + record[5] + b"}", object_pairs_hook=list)
    return [
        (
            name,
            bytes(value) if isinstance(value, list) else value.encode(),
        )
        for name, value in pairs
    ]


def export_field(name: str, value: bytes) -> bytes:
    """One field in journald's export format, binary-safe when the value is not one line of text."""
    if b"\n" not in value and printable(value):
        return b"%s=%s\n" % (name.encode(), value)
    return b"%s\n%s%s\n" % (name.encode(), struct.pack("<Q", len(value)), value)


def parse_export(data: bytes) -> Iterator[list[tuple[str, bytes]]]:
    """Entries of journald's export format (``journalctl -o export``), fields in order.

    A field is ``NAME=value\\n``, or ``NAME\\n`` + a little-endian u64 length + the
    raw value + ``\\n`` when the value holds a newline or binary data; a blank line ends
    an entry.
    """
    fields: list[tuple[str, bytes]] = []
    position = 0
    end = len(data)
    while position < end:
        newline = data.find(b"\n", position)
        if newline < 0:
            newline = end
        line = data[position:newline]
        if not line:
            if fields:
                yield fields
                fields = []
            position = newline + 1
            continue
        name, sep, value = line.partition(b"=")
        if sep:
            position = newline + 1
        else:
            start = newline + 1
            (length,) = struct.unpack_from("<Q", data, start)
            value = data[start + 8 : start + 8 + length]
            if len(value) != length:
                raise ValueError(f"export data ends inside field {name.decode(errors='replace')}")
            position = start + 8 + length + 1
        fields.append((name.decode("ascii"), value))
    if fields:
        yield fields


# -- text helpers --------------------------------------------------------------------------


def printable(value: bytes) -> bool:
    """True when journalctl prints ``value`` as text, not as ``[NB blob data]``."""
    try:
        return store.is_printable(value.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def strip_tab_ansi(text: bytes) -> bytes:
    """Drop colour (SGR) escape sequences and expand tabs, as journalctl's short output does."""
    if b"\x1b" in text:
        text = _SGR.sub(b"", text)
    if b"\t" in text:
        text = text.replace(b"\t", b" " * 8)
    return text


def format_bytes(size: int) -> str:
    """Sizes the way systemd's format_bytes() writes them: ``15B``, ``4.8K``, ``1.0M``."""
    last = len(_BYTE_UNITS) - 1
    for index, (suffix, factor) in enumerate(_BYTE_UNITS):
        if size >= factor:
            if index != last:
                tenth = (size // _BYTE_UNITS[index + 1][1] * 10 // _BYTE_UNITS[last][1]) % 10
            else:
                tenth = (size * 10 // factor) % 10
            return f"{size // factor}.{tenth}{suffix}"
    return f"{size}B"


def _multiline(value: bytes, indent: int) -> bytes:
    """``value``'s lines, the second on indented by ``indent``, as journalctl's print_multiline."""
    lines = value.split(b"\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    pad = b"\n" + b" " * indent
    return pad.join(lines) + b"\n"


def _single(value: Value) -> bytes | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


# -- output --------------------------------------------------------------------------------


class Formatter:
    """Turns records of one journal into one output format's bytes.

    Formats: ``json``, ``json-seq``, ``short``, ``short-iso``, ``short-precise``, ``verbose``,
    ``export`` and ``cat``, written byte for byte as journalctl (systemd 252) writes them when
    not on a terminal: full width, no colours. Times are local, so ``TZ=UTC`` gives
    journalctl's UTC output.
    """

    def __init__(self, mode: str, journal_id: str, *, show_all: bool = False) -> None:
        if mode not in FORMATS:
            raise ValueError(f"unknown output format {mode!r}; use one of {', '.join(FORMATS)}")
        self.mode = mode
        self.journal_id = journal_id
        self.show_all = show_all
        self._stamp_second = -1
        self._stamp = b""
        self.format: Callable[[Record], bytes] = {
            "json": self._json,
            "json-seq": self._json_seq,
            "cat": self._cat,
            "export": self._export,
            "verbose": self._verbose,
        }.get(mode, self._short)

    def many(self, records: list[Record]) -> bytes:
        """The output for ``records``, in their order."""
        if self.mode in ("json", "json-seq"):
            return self._json_many(records)
        return b"".join(map(self.format, records))

    def _json_many(self, records: list[Record]) -> bytes:
        # The hot path of `-o json -n all`: one %-format per entry, no decoding.
        entry = b"\x1e" + _JSON_ENTRY if self.mode == "json-seq" else _JSON_ENTRY
        jid = self.journal_id.encode()
        slow = 0 if self.show_all else store.FLAG_LONG_FIELD
        return b"".join(
            [
                entry % (jid, seq, rt, rt, mono, seq, jid, body)
                if not flags & slow
                else self.format((seq, rt, mono, prio, flags, body))
                for seq, rt, mono, prio, flags, body in records
            ]
        )

    def _json(self, record: Record) -> bytes:
        seq, realtime, monotonic, _priority, flags, body = record
        if flags & store.FLAG_LONG_FIELD and not self.show_all:
            body = self._without_long_values(body)
        jid = self.journal_id.encode()
        return _JSON_ENTRY % (jid, seq, realtime, realtime, monotonic, seq, jid, body)

    def _json_seq(self, record: Record) -> bytes:
        return b"\x1e" + self._json(record)

    @staticmethod
    def _without_long_values(body: bytes) -> bytes:
        doc = json.loads(b"{" + body + b"}")
        for name, value in doc.items():
            size = len(value) if isinstance(value, list) else len(value.encode())
            if size >= store.JSON_THRESHOLD:
                doc[name] = None
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()

    def _export(self, record: Record) -> bytes:
        seq, realtime, monotonic = record[:3]
        pairs = record_pairs(record)
        jid = self.journal_id.encode()
        head = b"__CURSOR=s=%s;i=%x;t=%x\n__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n" % (
            jid,
            seq,
            realtime,
            realtime,
            monotonic,
        )
        # No __SEQNUM/__SEQNUM_ID (journalctl 254 on writes them): the systemd-journal-remote
        # of Debian 12 (252), which reads this, complains of each as an "unknown dunder line".
        # journalctl puts the boot ID among the addressing fields, not among the others.
        boot = next((value for name, value in pairs if name == "_BOOT_ID"), None)
        if boot is not None:
            head += export_field("_BOOT_ID", boot)
        body = b"".join(export_field(name, value) for name, value in pairs if name != "_BOOT_ID")
        return head + body + b"\n"

    def _verbose(self, record: Record) -> bytes:
        pairs = record_pairs(record)
        realtime = record[1]
        # As journalctl: the sender's own clock when it gave one, else the journal's.
        source = next((v for n, v in pairs if n == "_SOURCE_REALTIME_TIMESTAMP"), None)
        if source is not None and source.isdigit():
            realtime = int(source)
        lines = [self._verbose_timestamp(realtime), b" [", cursor(self.journal_id, record).encode()]
        lines.append(b"]\n")
        for name, value in pairs:
            lines.append(b"    %s=" % name.encode())
            if self.show_all or printable(value):
                lines.append(_multiline(value, 4 + len(name) + 1))
            else:
                lines.append(b"[%s blob data]\n" % format_bytes(len(value)).encode())
        return b"".join(lines)

    @staticmethod
    def _verbose_timestamp(realtime: int) -> bytes:
        if not 0 < realtime < _FORMATTABLE_MAX:
            return b"--- XXXX-XX-XX XX:XX:XX UTC"
        second, micros = divmod(realtime, 1_000_000)
        local = time.localtime(second)
        return b"%s.%06d %s" % (
            time.strftime("%a %Y-%m-%d %H:%M:%S", local).encode(),
            micros,
            time.strftime("%Z", local).encode(),
        )

    def _cat(self, record: Record) -> bytes:
        message = _single(record_fields(record).get("MESSAGE"))
        if message is None:
            return b""
        return message + b"\n"

    def _timestamp(self, realtime: int) -> bytes:
        second, micros = divmod(realtime, 1_000_000)
        if second != self._stamp_second:
            local = time.localtime(second)
            if self.mode == "short-iso":
                text = time.strftime("%Y-%m-%dT%H:%M:%S%z", local)
            else:
                text = time.strftime("%b %d %H:%M:%S", local)
            self._stamp = text.encode()
            self._stamp_second = second
        if self.mode == "short-precise":
            return self._stamp + b".%06d" % micros
        return self._stamp

    def _short(self, record: Record) -> bytes:
        fields = record_fields(record)
        return self.short(fields, record[1])

    def short(self, fields: Fields, realtime: int) -> bytes:
        """One entry in this short format, from its fields (ours or parsed journalctl JSON)."""
        message = _single(fields.get("MESSAGE"))
        if message is None:
            return b""
        # As journalctl: the sender's own clock when it gave one, else the journal's.
        source = _single(fields.get("_SOURCE_REALTIME_TIMESTAMP"))
        if source and source.isdigit():
            realtime = int(source)
        line = self._timestamp(realtime)
        hostname = _single(fields.get("_HOSTNAME"))
        if hostname and printable(hostname):
            line += b" " + hostname
        identifier = _single(fields.get("SYSLOG_IDENTIFIER")) or _single(fields.get("_COMM"))
        if identifier and printable(identifier):
            line += b" " + identifier
        pid = _single(fields.get("_PID")) or _single(fields.get("SYSLOG_PID"))
        if pid and printable(pid):
            line += b"[" + pid + b"]"
        line += b": "
        if not self.show_all:
            message = strip_tab_ansi(message)
        if not self.show_all and not printable(message):
            return line + b"[" + format_bytes(len(message)).encode() + b" blob data]\n"
        lines = message.split(b"\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()
        if len(lines) == 1:
            return line + lines[0] + b"\n"
        indent = b" " * len(line.decode("utf-8", "replace"))
        return line + lines[0] + b"\n" + b"".join(indent + rest + b"\n" for rest in lines[1:])
