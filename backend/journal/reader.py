"""Provides reading a journal: filters, the newest N entries, and following new ones."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fnmatch
import json
import os
import re
import select
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from backend.journal import store
from backend.journal.fmt import record_fields
from backend.journal.store import Record

# -- filters -------------------------------------------------------------------------------

UNIT_SUFFIXES = (
    ".service", ".socket", ".target", ".device", ".mount", ".automount", ".swap",
    ".timer", ".path", ".slice", ".scope",
)  # fmt: skip


def mangle_unit(name: str) -> str:
    """``redis`` -> ``redis.service``, as systemctl and journalctl complete unit names."""
    if name.endswith(UNIT_SUFFIXES) or any(ch in name for ch in "*?["):
        return name
    return name + ".service"


@dataclass
class Query:
    """Which entries to show: journalctl's ``-u``, ``-t``, ``FIELD=VALUE``, ``-p``, ``-S``,
    ``-U``, ``-g`` and cursors. Values of one field are or-ed, different fields and-ed."""

    units: list[str] = field(default_factory=list)
    fields: dict[str, list[bytes]] = field(default_factory=dict)
    """Exact matches, as journalctl's ``FIELD=VALUE`` arguments (``-t`` adds to them)."""
    priorities: frozenset[int] | None = None
    since: int | None = None
    until: int | None = None
    grep: re.Pattern[str] | None = None
    after: tuple[str, int | None, int | None] | None = None
    """A parsed cursor (journal ID, seqnum, realtime): show only entries after it."""

    def __post_init__(self) -> None:
        self.units = [mangle_unit(unit) for unit in self.units]
        self._unit_needles = [
            store.encode_name(name) + store.encode_value(unit.encode())
            for unit in self.units
            if not any(ch in unit for ch in "*?[")
            for name in ("_SYSTEMD_UNIT", "UNIT")
        ]
        self._unit_globs = [unit for unit in self.units if any(ch in unit for ch in "*?[")]
        self._field_needles = [
            [store.encode_name(name) + store.encode_value(value) for value in values]
            for name, values in self.fields.items()
        ]

    def bind(self, journal_id: str) -> None:
        """Resolve the cursor against this journal: by seqnum if it is ours, else by time."""
        self._after_seqnum = self._after_realtime = None
        if self.after is None:
            return
        cursor_id, seqnum, realtime = self.after
        if cursor_id == journal_id and seqnum is not None:
            self._after_seqnum = seqnum
        else:
            self._after_realtime = realtime if realtime is not None else 0

    def matches(self, record: Record) -> bool:
        seqnum, realtime, _monotonic, priority, _flags, _body = record
        if self.priorities is not None and priority not in self.priorities:
            return False
        if self.since is not None and realtime < self.since:
            return False
        if self.until is not None and realtime > self.until:
            return False
        if self.after is not None:
            if self._after_seqnum is not None and seqnum <= self._after_seqnum:
                return False
            if self._after_realtime is not None and realtime <= self._after_realtime:
                return False
        if self.units and not self._unit_matches(record):
            return False
        for needles in self._field_needles:
            if not any(needle in record[5] for needle in needles):
                return False
        if self.grep is not None:
            message = record_fields(record).get("MESSAGE")
            if not isinstance(message, bytes):
                return False
            if self.grep.search(message.decode("utf-8", "surrogateescape")) is None:
                return False
        return True

    def _unit_matches(self, record: Record) -> bool:
        body = record[5]
        # The needle ends with the value's closing quote, so it cannot match a prefix of
        # a longer name, and inside a JSON string every quote is escaped.
        if any(needle in body for needle in self._unit_needles):
            return True
        if self._unit_globs:
            doc = json.loads(b"{" + body + b"}")
            unit = doc.get("_SYSTEMD_UNIT")
            if isinstance(unit, str):
                return any(fnmatch.fnmatchcase(unit, glob) for glob in self._unit_globs)
        return False

    @property
    def trivial(self) -> bool:
        return (
            not self.units
            and not self.fields
            and self.priorities is None
            and self.since is None
            and self.until is None
            and self.grep is None
            and self.after is None
        )


# -- reading -------------------------------------------------------------------------------


@dataclass
class Position:
    """Where a reader stands: a segment (open, so rotation cannot pull it away) and an offset."""

    path: Path
    file: BinaryIO
    offset: int
    last_seqnum: int = 0
    """The seqnum of the last whole entry before ``offset`` (when known)."""

    def close(self) -> None:
        self.file.close()


class Journal:
    """Read access to the journal in ``data_dir / "journal"``."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = Path(data_dir) / "journal"
        self.journal_id = self.reload_id()

    def reload_id(self) -> str:
        """The journal's ID ("" until a writer has created the journal)."""
        try:
            self.journal_id = (self.directory / "id").read_text().strip()
        except FileNotFoundError:
            self.journal_id = ""
        return self.journal_id

    def segments(self) -> list[Path]:
        return store.list_segments(self.directory)

    def _records(self, path: Path, query: Query) -> list[Record]:
        data = store.read_segment(path)
        if not data.startswith(store.MAGIC):
            return []
        records, _ = store.read_records(data, len(store.MAGIC))
        if not query.trivial:
            records = [record for record in records if query.matches(record)]
        return records

    def forward(self, query: Query) -> Iterator[list[Record]]:
        """Every matching entry, oldest first, a segment's worth at a time."""
        query.bind(self.journal_id)
        for path in self.segments():
            records = self._records(path, query)
            if records:
                yield records

    def newest(self, count: int, query: Query, *, up_to: int | None = None) -> list[Record]:
        """The newest ``count`` matching entries (up to seqnum ``up_to``), oldest first."""
        query.bind(self.journal_id)
        found: list[Record] = []
        for path in reversed(self.segments()):
            if len(found) >= count:
                break
            records = self._records(path, query)
            if up_to is not None:
                records = [record for record in records if record[0] <= up_to]
            found = records + found
        return found[-count:] if count else []

    def end(self) -> Position | None:
        """The position after the last whole entry, where a follower starts."""
        for path in reversed(self.segments()):
            try:
                file = path.open("rb")
            except FileNotFoundError:
                continue
            data = file.read()
            offset, last = store.valid_end(data, len(store.MAGIC))
            if last is None:
                last = store.segment_first_seqnum(path) - 1
            return Position(path, file, offset, last)
        return None

    def read_after(
        self, position: Position | None, query: Query
    ) -> tuple[list[Record], Position | None]:
        """Whole entries written after ``position``, and the position after them.

        A torn or half-written tail is not read until it is whole. The reader moves on to
        the next segment only once a newer one exists, which is when writers are done
        with the current one; the segment stays open, so rotation cannot pull it away.
        """
        query.bind(self.journal_id)
        out: list[Record] = []
        while True:
            segments = self.segments()
            if position is None:
                if not segments:
                    return out, None
                try:
                    position = Position(segments[0], segments[0].open("rb"), len(store.MAGIC))
                except FileNotFoundError:
                    continue
            position.file.seek(position.offset)
            data = position.file.read()
            records, consumed = store.read_records(data, 0)
            out += [record for record in records if query.matches(record)]
            position.offset += consumed
            newer = [path for path in segments if path.name > position.path.name]
            if not newer:
                return out, position
            position.close()
            position = None
            for path in newer:
                try:
                    position = Position(path, path.open("rb"), len(store.MAGIC))
                    break
                except FileNotFoundError:
                    continue

    def read_rest(self, position: Position, query: Query) -> list[Record]:
        """The whole entries left in ``position``'s segment, which stays open after its
        journal is deleted: what was written before the journal went away."""
        position.file.seek(position.offset)
        records, consumed = store.read_records(position.file.read(), 0)
        position.offset += consumed
        return [record for record in records if query.matches(record)]


# -- waiting for news ----------------------------------------------------------------------

_IN_MODIFY = 0x002
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_EVENT = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len (and ``len`` bytes of name after it)."""
_WATCH_MASK = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF


class DirectoryWatch:
    """Wakes when anything in a directory changes: inotify, or a stat poll without it.

    inotify comes through ctypes (the standard library has no binding); an idle follower
    then sleeps in poll() and costs nothing. Without inotify, it looks at the newest
    segment's size every 50 ms.

    It also notices the directory itself going away (deleted, or moved off its path:
    IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED, or a different inode or none at the path,
    looked at on every wake and at least once a second): :attr:`gone` is then set and
    :meth:`wait` returns. :meth:`arm` watches the directory found at the path again, once
    there is one.
    """

    POLL_INTERVAL = 0.05
    CHECK_INTERVAL = 1.0
    """How often an idle inotify watch also looks whether the directory is still there."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        self.gone = False
        """The directory that was watched has been removed or moved away from its path."""
        self._wd = -1
        self._identity: tuple[int, int] | None = None
        self._libc: ctypes.CDLL | None = None
        libc_name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._libc = libc
        self.fd = fd
        self.arm()
        self._last = self._stamp()

    @property
    def uses_inotify(self) -> bool:
        """There is an inotify instance: :attr:`fd` belongs in the caller's poller (the
        directory itself may still be followed by looking, when no watch could be added)."""
        return self.fd >= 0

    @property
    def present(self) -> bool:
        """A directory is being watched (it existed when last armed and has not gone)."""
        return self._identity is not None and not self.gone

    def _identity_now(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.directory)
        except OSError:
            return None
        return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None

    def arm(self) -> bool:
        """Watch the directory now at the path, if there is one; True when there is.

        The watch is set up before the caller reads, so nothing written after that read
        goes unnoticed.
        """
        self._unwatch()
        self.gone = False
        self._identity = None
        for _attempt in range(3):
            before = self._identity_now()
            if before is None:
                return False
            if self._libc is not None:
                wd = self._libc.inotify_add_watch(
                    self.fd, os.fsencode(self.directory), _WATCH_MASK | _IN_ONLYDIR
                )
                if wd >= 0:
                    self._wd = wd
                elif ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone again meanwhile, or replaced: look again
                # Else (no watches left: ENOSPC; EACCES): follow it by looking, as without inotify.
            # The same directory before and after: the watch is on the one we stat'ed.
            if self._identity_now() == before:
                self._identity = before
                self._last = self._stamp()
                return True
            self._unwatch()
        return False

    def _unwatch(self) -> None:
        if self._wd >= 0 and self._libc is not None:
            # Fails harmlessly (EINVAL) when the kernel has removed it already (IN_IGNORED).
            self._libc.inotify_rm_watch(self.fd, self._wd)
        self._wd = -1

    def _stamp(self) -> tuple[int, ...]:
        stamp: list[int] = []
        for path in store.list_segments(self.directory)[-1:]:
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            stamp += [info.st_ino, info.st_size, info.st_mtime_ns]
        return tuple(stamp)

    def wait(self, poller: select.poll, timeout: float | None) -> list[tuple[int, int]]:
        """Poll ``poller`` (which must hold :attr:`fd` when inotify is in use) until news.

        Returns the poll events of the other descriptors registered with ``poller``, so
        the caller sees a closed stdout while it waits. Returns early, with :attr:`gone`
        set, once the directory is removed.
        """
        if self._wd >= 0:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = self.CHECK_INTERVAL
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                events = poller.poll(wait * 1000)
                others = [(fd, ev) for fd, ev in events if fd != self.fd]
                if len(others) != len(events):
                    self.drain()
                # IN_DELETE_SELF comes only once nothing holds the directory, and our own open
                # segment holds it: so a look at the path, on every wake and once a second.
                if (
                    self._identity is not None
                    and not self.gone
                    and self._identity_now() != self._identity
                ):
                    self.gone = True
                if events or self.gone:
                    return others
                if deadline is not None and time.monotonic() >= deadline:
                    return others
        while True:
            events = poller.poll(self.POLL_INTERVAL * 1000)
            others = [(fd, ev) for fd, ev in events if fd != self.fd]
            if len(others) != len(events):
                self.drain()  # leftovers of an earlier watch
            if self._identity is not None and self._identity_now() != self._identity:
                self.gone = True
                return others
            stamp = self._stamp()
            if others or stamp != self._last:
                self._last = stamp
                return others

    def drain(self) -> None:
        """Read the pending events; note the watched directory's own removal among them."""
        data = b""
        try:
            while chunk := os.read(self.fd, 65536):
                data += chunk
        except BlockingIOError:
            pass
        offset = 0
        while offset + _IN_EVENT.size <= len(data):
            wd, mask, _cookie, length = _IN_EVENT.unpack_from(data, offset)
            offset += _IN_EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                # Events were lost: see for ourselves whether the directory is still there.
                if self._identity is not None and self._identity_now() != self._identity:
                    self.gone = True
            elif (
                wd == self._wd
                and wd >= 0
                and mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED)
            ):
                self.gone = True
        if self.gone and self._wd >= 0:
            # A directory moved away is still watched: stop hearing about it.
            self._unwatch()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
