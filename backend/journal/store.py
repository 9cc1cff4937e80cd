"""Provides the journal's on-disk layout: append-only segments of checksummed frames."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

TYPE_CHECKING = False  # readers start without typing and logging
if TYPE_CHECKING:
    import logging

# A journal is a directory of segments named by the sequence number of their first entry
# (``000000000000002a.journal``), plus an ``id`` file (the journal's sequence-number ID, as
# journald's ``__SEQNUM_ID``) and a ``.lock`` file writers hold while they append.
#
# A segment is ``MAGIC`` followed by frames, one per batch a writer appends with a single
# ``write()``: ``<u32 length><u32 crc32>`` and that many bytes of records. A record is
# ``<u32 length><u64 seqnum><u64 realtime µs><u64 monotonic µs><u8 priority><u8 flags>``
# followed by the entry's fields already encoded as a JSON object's members (``"MESSAGE":"…",
# "PRIORITY":"6"``), the way journalctl's ``-o json`` writes them. Keeping fields pre-encoded is
# what lets ``-o json`` run at hundreds of thousands of lines a second: output is a copy, not a
# re-encoding. One checksum per frame rather than per record keeps reads cheap; a torn frame
# (the writer died inside ``write()``) is skipped whole, and its entries were never complete.
# Priority and time sit in the fixed header so filters never decode the fields.
MAGIC = b"CTJRNL1\n"
FRAME = struct.Struct("<II")
RECORD = struct.Struct("<IQQQBB")
SEGMENT_SUFFIX = ".journal"
NO_PRIORITY = 255
FLAG_LONG_FIELD = 1
# journalctl writes a field this long (or longer) as null in JSON unless --all is given.
JSON_THRESHOLD = 4096

# What systemd's utf8_is_printable() rejects: C0 controls but tab and newline, DEL, C1.
_NOT_PRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Bytes that keep a value off the fast path (copied verbatim between quotes).
_NEEDS_CARE = re.compile(rb'[\x00-\x1f\x7f-\xff"\\]')

Record = tuple[int, int, int, int, int, bytes]
"""One decoded record: (seqnum, realtime µs, monotonic µs, priority, flags, encoded fields)."""


def is_printable(text: str) -> bool:
    """True when journalctl would show ``text`` as a string rather than as bytes."""
    return _NOT_PRINTABLE.search(text) is None


needs_care = _NEEDS_CARE.search
"""None when a value is stored as itself between quotes (the fast path of encode_value)."""


def encode_value(value: bytes) -> bytes:
    """One field value as journalctl's JSON writes it: a string, or an array of byte values."""
    if _NEEDS_CARE.search(value) is None:
        return b'"' + value + b'"'
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not is_printable(text):
        return b"[" + ",".join(map(str, value)).encode() + b"]"
    return json.dumps(text, ensure_ascii=False).encode()


def encode_name(name: str) -> bytes:
    """A field name followed by the colon, ready to be joined with its encoded value."""
    return b'"' + name.encode() + b'":'


def encode_fields(fields: Iterable[tuple[str, bytes]]) -> tuple[bytes, int]:
    """Encoded members for ``fields`` and the record flags they call for."""
    flags = 0
    parts = []
    for name, value in fields:
        if len(value) >= JSON_THRESHOLD:
            flags |= FLAG_LONG_FIELD
        parts.append(encode_name(name) + encode_value(value))
    return b",".join(parts), flags


def frame(parts: list[bytes]) -> bytes:
    """A frame around ``parts`` (packed :data:`RECORD` headers and their fields, in turn)."""
    body = b"".join(parts)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def segment_name(first_seqnum: int) -> str:
    return f"{first_seqnum:016x}{SEGMENT_SUFFIX}"


def segment_first_seqnum(path: Path) -> int:
    return int(path.name[: -len(SEGMENT_SUFFIX)], 16)


def list_segments(journal_dir: Path) -> list[Path]:
    """The journal's segments, oldest first."""
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    return [
        journal_dir / name
        for name in sorted(names)
        if name.endswith(SEGMENT_SUFFIX) and len(name) == 16 + len(SEGMENT_SUFFIX)
    ]


def make_journal_dir(journal_dir: Path, log: logging.Logger | None = None) -> None:
    """The journal's directory, 0750 as journald's (its data directory 0711 if missing too);
    one left looser by an older version is tightened, its files to 0640."""
    from clustertui.backend import filemodes  # here: only writers make journals

    if not journal_dir.parent.is_dir():
        filemodes.make_dirs(journal_dir.parent, filemodes.NODE_DIR)
    if not filemodes.make_dirs(journal_dir, filemodes.JOURNAL_DIR) and log is not None:
        filemodes.tighten(journal_dir, filemodes.JOURNAL_DIR, log)
        filemodes.tighten_files(journal_dir, filemodes.JOURNAL_FILE, log)


def journal_id(journal_dir: Path) -> str:
    """The journal's sequence-number ID (32 hex digits), created on first use."""
    path = journal_dir / "id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    make_journal_dir(journal_dir)
    import uuid  # here: readers, which never create a journal, do not pay for it

    from clustertui.backend import filemodes

    tmp = journal_dir / f".id.{os.getpid()}"
    filemodes.write_file(tmp, (uuid.uuid4().hex + "\n").encode(), filemodes.JOURNAL_FILE)
    try:
        # link() fails if another process created the ID first; theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def read_records(data: bytes, offset: int) -> tuple[list[Record], int]:
    """The records of the whole frames from ``offset`` on, and the offset just past them.

    Stops at the first frame that is incomplete or fails its checksum: that is a torn
    tail (a writer died mid-write, or is writing right now) and nothing after it counts.
    This loop is the hot path of every read, hence one unpack per record and no generator.
    """
    records: list[Record] = []
    append = records.append
    unpack = RECORD.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    end = len(data)
    while offset + FRAME.size <= end:
        length, crc = FRAME.unpack_from(data, offset)
        position = offset + FRAME.size
        stop = position + length
        if stop > end or crc32(view[position:stop]) != crc:
            break
        while position < stop:
            size, seqnum, realtime, monotonic, priority, flags = unpack(data, position)
            fields_at = position + RECORD.size
            position += 4 + size
            append((seqnum, realtime, monotonic, priority, flags, data[fields_at:position]))
        offset = stop
    return records, offset


def valid_end(data: bytes, offset: int) -> tuple[int, int | None]:
    """The offset after the last good record from ``offset`` on, and that record's seqnum."""
    records, offset = read_records(data, offset)
    return offset, records[-1][0] if records else None


def read_segment(path: Path) -> bytes:
    """A segment's bytes, or empty bytes when it has been rotated away meanwhile."""
    try:
        with path.open("rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
