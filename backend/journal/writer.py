"""Provides ``JournalWriter``: appends entries to a machine's journal, line by line or in bulk."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import socket
import threading
import time
from array import array
from collections.abc import Iterable
from pathlib import Path

from clustertui.backend import filemodes
from clustertui.backend.journal import index, store

log = logging.getLogger("clusterd.journal")

DEFAULT_MAX_BYTES = 128 * 1024 * 1024
# journald splits longer lines the same way (LineMax=).
LINE_MAX = 48 * 1024
# How long the flusher waits for more lines before it writes: a batch per wake-up,
# far below the 50 ms a follower may take to show a line.
BATCH_DELAY = 0.002
SYNC_INTERVAL = 1.0
# Past this many buffered entries the caller writes them itself, which bounds memory
# when lines come faster than the flusher thread gets the GIL.
MAX_PENDING = 50_000
SEGMENT_MAX = 16 * 1024 * 1024
SEGMENT_MIN = 4096

_LEVEL_PREFIX = re.compile(rb"<(0{0,2}[0-7])>")

# realtime, monotonic, priority, flags, encoded fields, index keys, MESSAGE's line (see
# index.MESSAGES)
Pending = tuple[int, int, int, int, bytes, bytes, bytes]


def read_boot_id() -> str:
    """This boot's ID as journald writes it (32 hex digits), or a fresh one without /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return os.urandom(16).hex()


def split_level_prefix(message: bytes, priority: int) -> tuple[bytes, int]:
    """``<N>text`` -> (text, N), as journald's SyslogLevelPrefix= does; others unchanged."""
    match = _LEVEL_PREFIX.match(message)
    if match:
        return message[match.end() :], int(match.group(1))
    return message, priority


class JournalWriter:
    """Appends entries to the journal in ``data_dir / "journal"``.

    ``max_bytes`` caps the journal's total size: segments are ``max_bytes / 8`` (at most
    16 MiB) and the oldest are deleted so that the total stays under the cap.

    Lines are buffered in memory and written by a background thread within a few milliseconds,
    so a follower sees them almost at once; the file is fsynced at least once a second. A
    crash therefore loses at most the last second, and older entries are never touched:
    every write is a checksummed frame, and a writer cuts a torn tail off before it appends.

    Several writers (the node agent, any number of ``clusterd cat``) may share one journal:
    each takes an exclusive ``flock`` on ``journal/.lock`` to number and append its batch.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        hostname: str | None = None,
        machine_id: str,
        boot_id: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = Path(data_dir) / "journal"
        store.make_journal_dir(self.directory, log)
        self.journal_id = store.journal_id(self.directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(min(max_bytes // 8, SEGMENT_MAX), SEGMENT_MIN)
        self.boot_id = boot_id or read_boot_id()
        self._common = [
            ("_BOOT_ID", self.boot_id.encode()),
            ("_MACHINE_ID", machine_id.encode()),
            ("_HOSTNAME", (hostname or socket.gethostname()).encode()),
        ]
        self._prefixes: dict[
            tuple[str | None, str | None, int | None, int], tuple[bytes, bytes]
        ] = {}
        self._partial: dict[tuple[str | None, int | None, str], bytes] = {}
        self._lock_fd = os.open(
            self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, filemodes.JOURNAL_FILE
        )
        self._segment: Path | None = None
        self._index = index.Builder()
        self._fd = -1
        self._size = 0
        self._next_seqnum = 1
        self._pending: list[Pending] = []
        # A plain lock guards the buffer (a Condition's Python-level methods cost more than
        # the rest of line()); the flusher is woken by an Event set only on the first line
        # of each batch.
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._io_lock = threading.Lock()
        self._closing = False
        self._unsynced_since: float | None = None
        self._flusher = threading.Thread(
            target=self._run_flusher, name="journal-flusher", daemon=True
        )
        self._flusher.start()
        # The flusher is a daemon thread: without this, lines of its last few milliseconds
        # would die with an interpreter that exits without close().
        atexit.register(self.close)

    # -- entries ---------------------------------------------------------------------------

    def line(
        self,
        message: bytes,
        *,
        unit: str | None,
        identifier: str | None,
        pid: int | None,
        priority: int = 6,
        stream: str = "stdout",
        level_prefix: bool = True,
    ) -> None:
        """Record one line of a unit's output (without its newline).

        ``stream`` says which of the unit's streams it came from; journald stores stdout
        and stderr alike as ``_TRANSPORT=stdout``, so it matters only to ``feed``.
        ``level_prefix=False`` keeps a leading ``<N>`` as text (SyslogLevelPrefix=no).
        """
        # The hot path of every unit's output: kept flat, with the buffer append inline.
        if level_prefix and message[:1] == b"<":
            message, priority = split_level_prefix(message, priority)
        cached = self._prefixes.get((unit, identifier, pid, priority))
        if cached is None:
            cached = self._prefix(unit, identifier, pid, priority)
        prefix, keys = cached
        if store.needs_care(message) is None:
            # Stored as itself between quotes, and its line in the index is itself.
            value = b'"' + message + b'"'
            text = message
        else:
            value = store.encode_value(message)
            if value[0] == 0x5B:  # stored as an array of bytes: the index says so
                keys = self._binary(keys)
                text = value
            else:  # and so for a string with escapes or beyond ASCII
                keys = self._odd(keys)
                text = value[1:-1]
        entry = (
            time.time_ns() // 1000,
            time.monotonic_ns() // 1000,
            priority,
            store.FLAG_LONG_FIELD if len(message) >= store.JSON_THRESHOLD else 0,
            prefix + value,
            keys,
            text,
        )
        with self._pending_lock:
            if self._closing:
                raise ValueError("the journal writer is closed")
            pending = self._pending
            pending.append(entry)
            count = len(pending)
        if count == 1:
            self._wake.set()
        elif count >= MAX_PENDING:
            self._write_pending()

    def feed(
        self,
        chunk: bytes,
        *,
        unit: str | None,
        identifier: str | None,
        pid: int | None,
        priority: int = 6,
        stream: str = "stdout",
        level_prefix: bool = True,
    ) -> None:
        """Record a chunk of a stream: whole lines now, a trailing partial line later.

        An empty ``chunk`` means end of stream: the partial line, if any, is recorded.
        """
        key = (unit, pid, stream)
        data = self._partial.pop(key, b"") + chunk
        line = self.line

        def emit(text: bytes) -> None:
            line(
                text,
                unit=unit,
                identifier=identifier,
                pid=pid,
                priority=priority,
                level_prefix=level_prefix,
            )

        if not chunk:
            if data:
                emit(data)
            return
        lines = data.split(b"\n")
        tail = lines.pop()
        for text in lines:
            emit(text)
        while len(tail) > LINE_MAX:
            emit(tail[:LINE_MAX])
            tail = tail[LINE_MAX:]
        if tail:
            self._partial[key] = tail

    def append(
        self,
        fields: Iterable[tuple[str, bytes]],
        *,
        realtime: int | None = None,
        monotonic: int | None = None,
    ) -> None:
        """Record an entry with arbitrary fields (as journald's native protocol allows).

        Fields starting with ``__`` are addressing fields and are not stored;
        ``realtime``/``monotonic`` (µs) default to now.
        """
        kept = [(name, value) for name, value in fields if not name.startswith("__")]
        priority = store.NO_PRIORITY
        for name, value in kept:
            if name == "PRIORITY" and value.isdigit() and int(value) <= 7:
                priority = int(value)
        encoded, flags = store.encode_fields(kept)
        keys = index.keys_for(kept, priority)
        self._queue(
            (
                time.time_ns() // 1000 if realtime is None else realtime,
                time.monotonic_ns() // 1000 if monotonic is None else monotonic,
                priority,
                flags,
                encoded,
                keys,
                index.message_line(index.last_message(kept)),
            )
        )

    def _prefix(
        self, unit: str | None, identifier: str | None, pid: int | None, priority: int
    ) -> tuple[bytes, bytes]:
        fields = [("PRIORITY", str(priority).encode())]
        if identifier:
            fields.append(("SYSLOG_IDENTIFIER", identifier.encode()))
        if pid is not None:
            fields.append(("_PID", str(pid).encode()))
        if unit:
            fields.append(("_SYSTEMD_UNIT", unit.encode()))
        fields.append(("_TRANSPORT", b"stdout"))
        fields.extend(self._common)
        encoded, _ = store.encode_fields(fields)
        prefix = encoded + b"," + store.encode_name("MESSAGE")
        if len(self._prefixes) > 4096:
            self._prefixes.clear()
        cached = (prefix, index.keys_for(fields, priority))
        self._prefixes[(unit, identifier, pid, priority)] = cached
        return cached

    def _binary(self, keys: bytes) -> bytes:
        return index.joined({*index.split(keys), index.BINARY_MESSAGE})

    def _odd(self, keys: bytes) -> bytes:
        return index.joined({*index.split(keys), index.ODD_MESSAGE})

    def _queue(self, entry: Pending) -> None:
        with self._pending_lock:
            if self._closing:
                raise ValueError("the journal writer is closed")
            self._pending.append(entry)
            count = len(self._pending)
        if count == 1:
            self._wake.set()
        elif count >= MAX_PENDING:
            self._write_pending()

    # -- durability ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered entry and fsync it: after this, a crash loses nothing."""
        self._write_pending()
        with self._io_lock:
            self._sync()

    def close(self) -> None:
        """Flush, stop the background thread and release the files."""
        with self._pending_lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        atexit.unregister(self.close)
        self._flusher.join()
        self.flush()
        with self._io_lock:
            self._refresh_index()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            os.close(self._lock_fd)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_flusher(self) -> None:
        while True:
            timeout = None
            if self._unsynced_since is not None:
                timeout = max(0.0, self._unsynced_since + SYNC_INTERVAL - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._closing:
                return
            if self._pending:
                time.sleep(BATCH_DELAY)
                try:
                    self._write_pending()
                except OSError as error:
                    # Keep the lines (a full disk may clear) and say so, once a second at most.
                    log.error("cannot write the journal in %s: %s", self.directory, error)
                    time.sleep(1.0)
                    self._wake.set()
                    continue
            since = self._unsynced_since
            if since is not None and time.monotonic() >= since + SYNC_INTERVAL:
                with self._io_lock:
                    self._sync()
                    # The segment being written keeps an index of what is synced: readers
                    # scan at most the last second's lines.
                    self._refresh_index()

    def _refresh_index(self) -> None:
        """Save the index of the segment being written if it covers less than this writer
        knows (called with the I/O lock held)."""
        if self._fd < 0 or self._index.covered_end <= self._index.saved_end:
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            self._save_index()
        except OSError as error:
            log.warning("cannot index the journal in %s: %s", self.directory, error)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sync(self) -> None:
        if self._fd >= 0 and self._unsynced_since is not None:
            os.fsync(self._fd)
        self._unsynced_since = None

    def _write_pending(self) -> None:
        with self._io_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            if not os.fstat(self._lock_fd).st_nlink:
                try:
                    self._start_again()
                except OSError:
                    with self._pending_lock:
                        self._pending[:0] = batch
                    raise
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
                self._append(batch)
            except OSError:
                with self._pending_lock:
                    self._pending[:0] = batch
                # What reached the file is unknown now: rescan it next time.
                self._size = -1
                raise
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            if self._unsynced_since is None:
                self._unsynced_since = time.monotonic()

    def _start_again(self) -> None:
        """The journal was deleted under us (its lock file is gone): start a new one in its
        place, with a new ID, rather than write into files nobody can open. Followers wait
        for the directory to come back and follow the new journal from its start."""
        log.warning("the journal in %s was removed; starting a new one", self.directory)
        store.make_journal_dir(self.directory, log)
        self.journal_id = store.journal_id(self.directory)
        lock_fd = os.open(
            self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, filemodes.JOURNAL_FILE
        )
        os.close(self._lock_fd)
        self._lock_fd = lock_fd
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._segment = None
        self._size = -1
        self._unsynced_since = None

    def _append(self, batch: list[Pending]) -> None:
        # One frame per write(); a frame never spans two segments.
        pack = store.RECORD.pack
        header = store.RECORD.size - 4
        seqnum = self._next_seqnum
        parts: list[bytes] = []
        size = self._size + store.FRAME.size
        # The index's appends, inline: this loop runs once per line written.
        built = self._index
        add_offset, add_seqnum = built.offsets.append, built.seqnums.append
        add_realtime, group_of = built.realtimes.append, built.groups.get
        add_message = built.messages.append
        for realtime, monotonic, priority, flags, fields, keys, message in batch:
            record = pack(header + len(fields), seqnum, realtime, monotonic, priority, flags)
            parts.append(record)
            parts.append(fields)
            add_offset(size)
            add_seqnum(seqnum)
            add_realtime(realtime)
            group = group_of(keys)
            if group is None:
                group = built.groups[keys] = array(index.OFFSET_TYPE)
            group.append(size)
            add_message(message)
            size += len(record) + len(fields)
            seqnum += 1
            if size >= self.segment_bytes:
                self._write_frame(parts)
                parts = []
                self._next_seqnum = seqnum
                self._rotate()
                built = self._index
                add_offset, add_seqnum = built.offsets.append, built.seqnums.append
                add_realtime, group_of = built.realtimes.append, built.groups.get
                add_message = built.messages.append
                size = self._size + store.FRAME.size
        if parts:
            self._write_frame(parts)
        self._next_seqnum = seqnum

    def _write_frame(self, parts: list[bytes]) -> None:
        data = store.frame(parts)
        offset = self._size
        self._write(data)
        self._index.frame_written(offset, data[: store.FRAME.size], self._size)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written

    # -- segments (called with the journal's flock held) -------------------------------------

    def _catch_up(self) -> None:
        """Find where the journal ends now: other writers may have appended or rotated."""
        segments = store.list_segments(self.directory)
        if not segments:
            self._open_segment(self._next_seqnum, create=True)
            return
        newest = segments[-1]
        if newest != self._segment:
            self._open_segment(store.segment_first_seqnum(newest), create=False)
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        if size < len(store.MAGIC):
            # Created by a writer that died before it wrote the magic.
            os.ftruncate(self._fd, 0)
            os.write(self._fd, store.MAGIC)
            self._size = len(store.MAGIC)
            self._index = index.Builder()
            return
        start = self._size if len(store.MAGIC) <= self._size < size else len(store.MAGIC)
        assert self._segment is not None
        if start == len(store.MAGIC):
            # What this writer knew of the segment is stale: index it again, from its
            # saved index when that one is sound.
            self._index = index.Builder.resume(self._segment)
            start = self._index.covered_end
        with self._segment.open("rb") as f:
            f.seek(start)
            data = f.read()
        # Index what other writers appended meanwhile; this also finds the last whole frame.
        good = self._index.add_data(data, start)
        if self._index.seqnums:
            self._next_seqnum = self._index.seqnums[-1] + 1
        if good < size:
            # A writer died mid-record; nobody else writes while we hold the lock.
            os.ftruncate(self._fd, good)
        self._size = good

    def _open_segment(self, first_seqnum: int, *, create: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        path = self.directory / store.segment_name(first_seqnum)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            self._fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, filemodes.JOURNAL_FILE)
            os.write(self._fd, store.MAGIC)
            self._size = len(store.MAGIC)
        else:
            self._fd = os.open(path, flags)
            # Unknown content: _catch_up() rescans from the start.
            self._size = -1
        self._segment = path
        self._index = index.Builder()
        self._next_seqnum = first_seqnum

    def _save_index(self) -> None:
        """Keep the index of the segment being written beside it (best effort: readers scan
        whatever no sound index covers)."""
        if self._segment is None:
            return
        try:
            self._index.save(self._segment)
        except OSError as error:
            log.warning("cannot save the journal index of %s: %s", self._segment, error)

    def _rotate(self) -> None:
        if self._unsynced_since is not None:
            os.fsync(self._fd)
        # The segment is sealed: its index is complete from now on.
        self._save_index()
        self._open_segment(self._next_seqnum, create=True)
        self._unsynced_since = time.monotonic()
        segments = store.list_segments(self.directory)
        sizes = {}
        for path in segments:
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:
                sizes[path] = 0
        # Leave room for the new segment to fill, so the journal never outgrows its cap.
        total = sum(sizes.values()) + self.segment_bytes
        for path in segments[:-1]:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            index.index_path(path).unlink(missing_ok=True)
            total -= sizes[path]
        index.sweep(self.directory)
