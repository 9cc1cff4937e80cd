"""Provides per-segment indexes: which entries hold a field's value, and the segment's bounds.

Beside each segment ``N.journal`` lies ``N.idx``: for every value of the indexed fields
(``_SYSTEMD_UNIT``, ``UNIT``, ``SYSLOG_IDENTIFIER``, ``PRIORITY``, ``_PID``, ``_BOOT_ID``) and
for every header priority, the sorted byte offsets of the records holding it; the offset,
seqnum and realtime of every record; every record's MESSAGE, one per line, for -g (see
:data:`MESSAGES`); and the segment's first/last seqnum and lowest/highest realtime. It
covers the segment's whole frames up to ``covered_end``; whatever a writer appended since
is read the old way, frame by frame.

An index is a snapshot, written to a temporary file and renamed over the old one. It is
never trusted blindly: its header, directory and every section carry a CRC32, and the
segment's first and last covered frame headers are compared with the segment's bytes. An
index that fails any check, or none at all, is rebuilt from the segment.

A key is the member exactly as it is stored (``"_PID":"42"``), which is also what
:class:`~backend.journal.reader.Query` looks for in a record, so the index and a scan
agree by construction; a header priority ``p`` has the key ``\\0p`` followed by its digit.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate, chain, repeat
from operator import add, le, lt
from pathlib import Path

from clustertui.backend.journal import store

INDEXED = ("_SYSTEMD_UNIT", "UNIT", "SYSLOG_IDENTIFIER", "PRIORITY", "_PID", "_BOOT_ID")
INDEX_SUFFIX = ".idx"
MAGIC = b"CTJIDX1\n"
# covered_end, count, first seqnum, last seqnum, min realtime, max realtime, flags,
# first frame header, last frame offset, last frame header, directory length, directory
# CRC; then the header's own CRC.
HEADER = struct.Struct("<QIQQQQI8sQ8sII")
HEADER_CRC = struct.Struct("<I")
ENTRY = struct.Struct("<HQII")  # key length, start, item count, CRC; then the key
SORTED_REALTIME = 1
SORTED_SEQNUM = 2
# Seqnums first..last without a gap (the rule: one writer at a time numbers entries):
# then no seqnum section is stored.
CONTIGUOUS_SEQNUM = 4
OFFSETS = b"\0offsets"
SEQNUMS = b"\0seqnums"
REALTIMES = b"\0realtimes"
# -g's haystack: every covered entry's MESSAGE as stored (its JSON value, the last member
# of that name, without the quotes of a string; nothing when it has none), each after a
# newline, which no stored value holds; and where each entry's line starts in it. One
# find() over these bytes looks at a quarter of what a find() over the segment would, and
# a line of a plain message (see ODD_MESSAGE) is the message itself: a regular expression
# runs over them all at once, ``^`` and ``$`` anchored at the lines.
MESSAGES = b"\0msg"
MESSAGE_STARTS = b"\0msg-starts"
_SPECIAL = (OFFSETS, SEQNUMS, REALTIMES, MESSAGES, MESSAGE_STARTS)
_NAMES = tuple((name, store.encode_name(name)) for name in INDEXED)
# Segments are at most 16 MiB plus one batch: byte offsets fit 32 bits.
OFFSET_TYPE = "I"


# Entries whose MESSAGE is stored as an array of bytes (not UTF-8, or unprintable): -g
# looks at them whatever they hold, as no plain text of theirs shows in the segment.
BINARY_MESSAGE = b"\0m["
# Entries whose (last) MESSAGE is a string stored with escapes or with bytes beyond ASCII:
# their line is not the message itself, so -g looks at them whatever the lines hold. (Their
# letters may also equal an ASCII letter of a case-blind pattern: the Kelvin sign and k, the
# long s and s, dotted and dotless i and i.) Only in indexes that keep the messages.
ODD_MESSAGE = b"\0m~"
_MESSAGE_NAME = store.encode_name("MESSAGE")
_BINARY_MESSAGE_MEMBER = _MESSAGE_NAME + b"["


def priority_key(priority: int) -> bytes:
    return b"\0p" + str(priority).encode()


def field_key(name: str, value: bytes) -> bytes:
    return store.encode_name(name) + store.encode_value(value)


def joined(keys: set[bytes]) -> bytes:
    """A set of keys as one bytes object (no key holds a raw newline: JSON escapes it).

    Bytes, not a tuple: an entry waiting in the writer's buffer then holds no container,
    which keeps it out of the garbage collector's way."""
    return b"\n".join(sorted(keys))


def split(keys: bytes) -> list[bytes]:
    return keys.split(b"\n")


def keys_for(fields: list[tuple[str, bytes]], priority: int) -> bytes:
    """The index keys of an entry with ``fields`` and header ``priority`` (no duplicates)."""
    keys = {field_key(name, value) for name, value in fields if name in INDEXED}
    keys.add(priority_key(priority))
    if any(name == "MESSAGE" and store.encode_value(value)[:1] == b"[" for name, value in fields):
        keys.add(BINARY_MESSAGE)
    if is_odd(last_message(fields)):
        keys.add(ODD_MESSAGE)
    return joined(keys)


def value_end(body: bytes, start: int) -> int:
    """The offset just past the encoded value starting at ``body[start]``."""
    if body[start : start + 1] == b"[":
        return body.index(b"]", start) + 1
    # A string: the first quote not escaped by an odd run of backslashes.
    position = start + 1
    while True:
        quote = body.index(b'"', position)
        slashes = 0
        while body[quote - 1 - slashes] == 0x5C:
            slashes += 1
        if slashes % 2 == 0:
            return quote + 1
        position = quote + 1


def stored_message(body: bytes) -> bytes:
    """The MESSAGE value of a stored record as it is stored (its last member of that name,
    which is the one a JSON parser keeps), or b"" when it has none."""
    at = body.rfind(_MESSAGE_NAME)
    if at < 0:
        return b""
    start = at + len(_MESSAGE_NAME)
    return body[start : value_end(body, start)]


def message_line(value: bytes) -> bytes:
    """A stored MESSAGE value as its line in :data:`MESSAGES` (a string without quotes)."""
    return value[1:-1] if value[:1] == b'"' else value


def is_odd(value: bytes) -> bool:
    """A stored string whose line is not the message itself (see :data:`ODD_MESSAGE`)."""
    return value[:1] == b'"' and (b"\\" in value or not value.isascii())


def last_message(fields: list[tuple[str, bytes]]) -> bytes:
    """What :func:`stored_message` finds in the record ``fields`` are stored as."""
    for name, value in reversed(fields):
        if name == "MESSAGE":
            return store.encode_value(value)
    return b""


def extract_keys(body: bytes, priority: int, message: bytes | None = None) -> bytes:
    """The index keys of a stored record, read from its encoded fields.

    A member name with its quotes and colon cannot occur inside a JSON string (every quote
    there is escaped), so each find() hit is a member.
    """
    keys = {priority_key(priority)}
    if _BINARY_MESSAGE_MEMBER in body:
        keys.add(BINARY_MESSAGE)
    if is_odd(stored_message(body) if message is None else message):
        keys.add(ODD_MESSAGE)
    for _name, needle in _NAMES:
        at = body.find(needle)
        while at >= 0:
            end = value_end(body, at + len(needle))
            keys.add(body[at:end])
            at = body.find(needle, end)
    return joined(keys)


class Builder:
    """An index being built, record by record, for one segment."""

    def __init__(self) -> None:
        self.offsets = array(OFFSET_TYPE)
        self.seqnums = array("Q")
        self.realtimes = array("Q")
        # Each record's line (see MESSAGES): the MESSAGES section joins them.
        self.messages: list[bytes] = []
        # Records with the same keys (one set per unit/pid/priority, as the writer caches
        # them) share one offset list: one append per record. Saving merges what the groups
        # gained since the last save into the postings, so saving often stays linear.
        self.groups: dict[bytes, array[int]] = {}
        self.consumed: dict[bytes, int] = {}
        self.merged = 0
        self.postings: dict[bytes, array[int]] = {}
        self.checked = 0
        self.realtime_sorted = True
        self.seqnum_sorted = True
        self.covered_end = len(store.MAGIC)
        self.first_frame = b""
        self.last_frame_offset = 0
        self.last_frame = b""
        self.saved_end = 0

    @classmethod
    def resume(cls, segment: Path) -> Builder:
        """A builder holding what the sound saved index of ``segment`` covers, else nothing."""
        builder = cls()
        try:
            fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return builder
        try:
            loaded = load(segment, fd)
        finally:
            os.close(fd)
        # An index without the messages (written before they were kept) is not resumed:
        # the segment is indexed again from its bytes.
        if loaded is None or loaded.count == 0 or not loaded.has_messages:
            return builder
        try:
            builder.offsets = array(OFFSET_TYPE, loaded.array(OFFSETS))
            builder.seqnums = array("Q", loaded.array(SEQNUMS))
            builder.realtimes = array("Q", loaded.array(REALTIMES))
            data, start, end = loaded.messages()
            builder.messages = data[start + 1 : end].split(b"\n")
            if len(builder.messages) != loaded.count:
                raise Damaged("index section of messages")
            for key in loaded.sections:
                if key not in _SPECIAL:
                    builder.postings[key] = array(OFFSET_TYPE, loaded.array(key))
            builder.realtime_sorted = bool(loaded.flags & SORTED_REALTIME)
            builder.seqnum_sorted = bool(loaded.flags & SORTED_SEQNUM)
            builder.checked = builder.merged = loaded.count
        except Damaged:
            return cls()
        builder.covered_end = loaded.covered_end
        builder.first_frame = loaded.first_frame
        builder.last_frame_offset = loaded.last_frame_offset
        builder.last_frame = loaded.last_frame
        builder.saved_end = loaded.covered_end
        return builder

    def add(self, offset: int, seqnum: int, realtime: int, keys: bytes, line: bytes) -> None:
        self.offsets.append(offset)
        self.seqnums.append(seqnum)
        self.realtimes.append(realtime)
        self.messages.append(line)
        group = self.groups.get(keys)
        if group is None:
            group = self.groups[keys] = array(OFFSET_TYPE)
        group.append(offset)

    def _merge(self) -> None:
        """Bring the postings and the sortedness flags up to date with the records added."""
        pending: dict[bytes, list[array[int]]] = {}
        for gid, group in self.groups.items():
            done = self.consumed.get(gid, 0)
            if done < len(group):
                fresh = group[done:]
                self.consumed[gid] = len(group)
                for key in split(gid):
                    pending.setdefault(key, []).append(fresh)
        count = len(self.offsets)
        fresh_count = count - self.merged
        for key, parts in pending.items():
            # Offsets only grow: what is new sorts after what was merged before.
            merged = self.postings.setdefault(key, array(OFFSET_TYPE))
            if len(parts) == 1:
                merged.extend(parts[0])
            elif sum(map(len, parts)) == fresh_count:
                # Every new record holds the key (a boot ID, a busy identifier): no sort.
                merged.extend(self.offsets[self.merged : count])
            else:
                merged.extend(sorted(chain.from_iterable(parts)))
        self.merged = count
        start = max(self.checked - 1, 0)
        if start < count - 1:
            if self.realtime_sorted:
                realtimes = self.realtimes[start:count]
                self.realtime_sorted = all(map(le, realtimes[:-1], realtimes[1:]))
            if self.seqnum_sorted:
                seqnums = self.seqnums[start:count]
                self.seqnum_sorted = all(map(lt, seqnums[:-1], seqnums[1:]))
        self.checked = count

    def frame_written(self, offset: int, header: bytes, end: int) -> None:
        """A whole frame with ``header`` now spans ``[offset, end)``."""
        if not self.first_frame:
            self.first_frame = header
        self.last_frame_offset = offset
        self.last_frame = header
        self.covered_end = end

    def add_data(self, data: bytes, base: int) -> int:
        """Index the whole frames of ``data`` (read at segment offset ``base``); their end."""
        offset = 0
        end = len(data)
        unpack = store.RECORD.unpack_from
        view = memoryview(data)
        while offset + store.FRAME.size <= end:
            length, crc = store.FRAME.unpack_from(data, offset)
            position = offset + store.FRAME.size
            stop = position + length
            if stop > end or zlib.crc32(view[position:stop]) != crc:
                break
            while position < stop:
                size, seqnum, realtime, _mono, priority, _flags = unpack(data, position)
                body = data[position + store.RECORD.size : position + 4 + size]
                message = stored_message(body)
                keys = extract_keys(body, priority, message)
                self.add(base + position, seqnum, realtime, keys, message_line(message))
                position += 4 + size
            self.frame_written(base + offset, data[offset : offset + store.FRAME.size], base + stop)
            offset = stop
        return base + offset

    def serialize(self) -> bytes:
        self._merge()
        count = len(self.offsets)
        flags = 0
        if self.realtime_sorted:
            flags |= SORTED_REALTIME
        if self.seqnum_sorted:
            flags |= SORTED_SEQNUM
            if count and self.seqnums[-1] - self.seqnums[0] == count - 1:
                flags |= CONTIGUOUS_SEQNUM
        offsets = self.offsets.tobytes()
        sections: list[tuple[bytes, bytes, int]] = [(OFFSETS, offsets, count)]
        if not flags & CONTIGUOUS_SEQNUM:
            sections.append((SEQNUMS, self.seqnums.tobytes(), count))
        sections.append((REALTIMES, self.realtimes.tobytes(), count))
        messages = self.messages
        joined_messages = b"\n" + b"\n".join(messages) if messages else b""
        # Line i starts after the lines before it, each a newline and its text.
        starts = array(OFFSET_TYPE, accumulate(map(add, map(len, messages), repeat(1)), initial=1))
        starts.pop()
        sections.append((MESSAGES, joined_messages, len(joined_messages)))
        sections.append((MESSAGE_STARTS, starts.tobytes(), count))
        for key in sorted(self.postings):
            merged = self.postings[key]
            # A key every record holds shares the offsets' bytes (same start, same CRC).
            data = b"" if len(merged) == count else merged.tobytes()
            sections.append((key, data, len(merged)))
        directory = []
        blobs = []
        position = 0
        offsets_crc = zlib.crc32(offsets)
        for key, data, items in sections:
            if key != OFFSETS and not data and items == count and count:
                directory.append(ENTRY.pack(len(key), 0, items, offsets_crc) + key)
                continue
            directory.append(ENTRY.pack(len(key), position, items, zlib.crc32(data)) + key)
            blobs.append(data)
            position += len(data)
        dir_bytes = b"".join(directory)
        header = HEADER.pack(
            self.covered_end,
            count,
            self.seqnums[0] if count else 0,
            self.seqnums[-1] if count else 0,
            min(self.realtimes) if count else 0,
            max(self.realtimes) if count else 0,
            flags,
            self.first_frame.ljust(8, b"\0"),
            self.last_frame_offset,
            self.last_frame.ljust(8, b"\0"),
            len(dir_bytes),
            zlib.crc32(dir_bytes),
        )
        return b"".join([MAGIC, header, HEADER_CRC.pack(zlib.crc32(header)), dir_bytes, *blobs])

    def save(self, segment: Path) -> None:
        """Write the snapshot beside ``segment``, atomically (a temporary file renamed)."""
        path = index_path(segment)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        data = self.serialize()
        from clustertui.backend import (
            filemodes,  # here: a reader saves an index only when it rebuilt one
        )

        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = os.open(tmp, flags, filemodes.JOURNAL_FILE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.saved_end = self.covered_end


def index_path(segment: Path) -> Path:
    return segment.with_name(segment.name[: -len(store.SEGMENT_SUFFIX)] + INDEX_SUFFIX)


def sweep(directory: Path, *, older_than: float = 60.0) -> None:
    """Remove indexes whose segment is gone, and temporary files a dead saver left."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    present = set(names)
    now = time.time()
    for name in names:
        path = directory / name
        if name.endswith(INDEX_SUFFIX) and not name.startswith("."):
            if name[: -len(INDEX_SUFFIX)] + store.SEGMENT_SUFFIX not in present:
                path.unlink(missing_ok=True)
        elif name.startswith(".") and INDEX_SUFFIX + "." in name:
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink(missing_ok=True)
            except OSError:
                pass


class Damaged(Exception):
    """An index that fails a check: it is rebuilt, never used."""


class SegmentIndex:
    """A loaded index: its bounds at once, its sections on demand (each checked)."""

    # The header's fields (struct gives them untyped).
    covered_end: int
    count: int
    first_seqnum: int
    last_seqnum: int
    min_realtime: int
    max_realtime: int
    flags: int
    first_frame: bytes
    last_frame_offset: int
    last_frame: bytes

    def __init__(self, data: bytes | mmap.mmap) -> None:
        if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + HEADER.size + 4:
            raise Damaged("no index header")
        at = len(MAGIC)
        header = data[at : at + HEADER.size]
        (crc,) = HEADER_CRC.unpack_from(data, at + HEADER.size)
        if zlib.crc32(header) != crc:
            raise Damaged("index header checksum")
        (
            self.covered_end,
            self.count,
            self.first_seqnum,
            self.last_seqnum,
            self.min_realtime,
            self.max_realtime,
            self.flags,
            self.first_frame,
            self.last_frame_offset,
            self.last_frame,
            dir_len,
            dir_crc,
        ) = HEADER.unpack(header)
        at += HEADER.size + HEADER_CRC.size
        dir_bytes = data[at : at + dir_len]
        if len(dir_bytes) != dir_len or zlib.crc32(dir_bytes) != dir_crc:
            raise Damaged("index directory checksum")
        self._data = data
        base = at + dir_len
        self.sections: dict[bytes, tuple[int, int, int]] = {}
        position = 0
        while position < dir_len:
            length, start, count, crc = ENTRY.unpack_from(dir_bytes, position)
            position += ENTRY.size
            key = dir_bytes[position : position + length]
            position += length
            self.sections[key] = (base + start, count, crc)
        self._cache: dict[bytes, Sequence[int]] = {}
        needed = [OFFSETS, REALTIMES]
        if not self.flags & CONTIGUOUS_SEQNUM:
            needed.append(SEQNUMS)
        for key in needed:
            if self.sections.get(key, (0, 0, 0))[1] != self.count:
                raise Damaged("index sections")
        self.has_messages = MESSAGES in self.sections and MESSAGE_STARTS in self.sections
        if self.has_messages and self.sections[MESSAGE_STARTS][1] != self.count:
            raise Damaged("index message sections")

    def array(self, key: bytes) -> Sequence[int]:
        """The section ``key`` (an empty array when no record holds it)."""
        found = self._cache.get(key)
        if found is not None:
            return found
        if key == SEQNUMS and self.flags & CONTIGUOUS_SEQNUM:
            return range(self.first_seqnum, self.first_seqnum + self.count)
        typecode = "Q" if key in (SEQNUMS, REALTIMES) else OFFSET_TYPE
        result = array(typecode)
        entry = self.sections.get(key)
        if entry is not None:
            start, count, crc = entry
            raw = self._data[start : start + count * result.itemsize]
            if len(raw) != count * result.itemsize or zlib.crc32(raw) != crc:
                raise Damaged(f"index section {key!r}")
            result.frombytes(raw)
        self._cache[key] = result
        return result

    def messages(self) -> tuple[bytes | mmap.mmap, int, int]:
        """Where the :data:`MESSAGES` section lies, checked: (buffer, start, end), without
        a copy (a find() with bounds reads it in place); empty when the index has none."""
        entry = self.sections.get(MESSAGES)
        if entry is None:
            return b"", 0, 0
        start, count, crc = entry
        data = self._data
        if start + count > len(data):
            raise Damaged("index section of messages")
        with memoryview(data) as whole, whole[start : start + count] as view:
            if zlib.crc32(view) != crc:
                raise Damaged("index section of messages")
        return data, start, start + count

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return [key for key in self.sections if key.startswith(prefix)]

    def matches_segment(self, fd: int) -> bool:
        """True when the segment's bytes still hold the frames this index was built from."""
        if self.count == 0:
            return True
        first = os.pread(fd, 8, len(store.MAGIC))
        last = os.pread(fd, 8, self.last_frame_offset)
        return first == self.first_frame and last == self.last_frame


def load(segment: Path, fd: int) -> SegmentIndex | None:
    """The valid index of ``segment`` (open as ``fd``), or None when missing or damaged."""
    try:
        with open(index_path(segment), "rb") as f:
            # Mapped, not read: a question touches only the sections it needs.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        loaded = SegmentIndex(data)
    except (Damaged, struct.error):
        return None
    if os.fstat(fd).st_size < loaded.covered_end or not loaded.matches_segment(fd):
        return None
    return loaded


def build(segment: Path, data: bytes | mmap.mmap, *, save: bool) -> SegmentIndex:
    """Index ``data`` (the segment's bytes) and, when ``save``, keep the index beside it."""
    builder = Builder()
    if data[: len(store.MAGIC)] == store.MAGIC:
        builder.add_data(data[len(store.MAGIC) :], len(store.MAGIC))
    if save:
        try:
            builder.save(segment)
            if not segment.exists():
                # Rotated away meanwhile: no index without its segment.
                index_path(segment).unlink(missing_ok=True)
        except OSError:
            pass
    return SegmentIndex(builder.serialize())
