"""Provides reading a journal: filters, the newest N entries, and following new ones."""

from __future__ import annotations

import errno
import fnmatch
import json
import mmap
import os
import re
import select
import stat
import struct
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from clustertui.backend.journal import index, store
from clustertui.backend.journal.fmt import decode_value
from clustertui.backend.journal.store import Record

# typing costs `clusterd journal` a few milliseconds at start-up, for an annotation only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

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


class Query:
    """Which entries to show: journalctl's ``-u``, ``-t``, ``FIELD=VALUE``, ``-p``, ``-S``,
    ``-U``, ``-g`` and cursors. Values of one field are or-ed, different fields and-ed.

    ``fields`` are exact matches, as journalctl's ``FIELD=VALUE`` arguments (``-t`` adds to
    them); ``after`` is a parsed cursor (journal ID, seqnum, realtime): only entries after
    it. (A plain class, not a dataclass: `clusterd journal` starts without importing
    dataclasses and inspect.)
    """

    def __init__(
        self,
        units: list[str] | None = None,
        fields: dict[str, list[bytes]] | None = None,
        priorities: frozenset[int] | None = None,
        since: int | None = None,
        until: int | None = None,
        grep: re.Pattern[str] | None = None,
        after: tuple[str, int | None, int | None] | None = None,
    ) -> None:
        self.units = [mangle_unit(unit) for unit in units or []]
        self.fields = dict(fields or {})
        self.priorities = priorities
        self.since = since
        self.until = until
        self.grep = grep
        self.after = after
        self._after_seqnum: int | None = None
        self._after_realtime: int | None = None
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
        # -g over a message that is plain printable ASCII (stored between quotes, without
        # escapes) runs a bytes pattern on the stored bytes: no decoding at all. Only an
        # ASCII pattern is compiled so (a str pattern and a bytes pattern agree on such text).
        self._grep_bytes: re.Pattern[bytes] | None = None
        # What -g looks for first: in a segment whose index marks messages beyond ASCII
        # (every case-blind match among those is looked at), a literal may hold any ASCII
        # letter; in an older index, only those without non-ASCII equals.
        self.grep_literal = None if self.grep is None else required_literal(self.grep)
        self.grep_literal_ascii = (
            None if self.grep is None else required_literal(self.grep, ascii_only=True)
        )
        if self.grep is not None and self.grep.pattern.isascii():
            try:
                self._grep_bytes = re.compile(
                    self.grep.pattern.encode(), self.grep.flags & ~re.UNICODE
                )
            except re.error:
                self._grep_bytes = None
        # Without a literal, the bytes pattern runs over the index's lines of messages at
        # once, ``^`` and ``$`` at the lines (MULTILINE): a plain message's line is the
        # message, and the newlines around it stand where its ends are. What sees past a
        # line's ends differently (\A, \Z, negative lookarounds) is not run so.
        self.grep_lines: re.Pattern[bytes] | None = None
        if (
            self.grep is not None
            and self._grep_bytes is not None
            and not _SEES_PAST_LINES.search(self.grep.pattern)
        ):
            self.grep_lines = re.compile(
                self._grep_bytes.pattern, self._grep_bytes.flags | re.MULTILINE
            )

    @property
    def after_seqnum(self) -> int | None:
        return self._after_seqnum

    @property
    def after_realtime(self) -> int | None:
        return self._after_realtime

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
        if self.grep is not None and not self._grep_matches(record[5]):
            return False
        return True

    def _grep_matches(self, body: bytes) -> bool:
        # The last MESSAGE member is the one a JSON parser keeps.
        at = body.rfind(b'"MESSAGE":')
        if at < 0:
            return False
        start = at + 10
        raw = body[start : index.value_end(body, start)]
        if self._grep_bytes is not None and raw[:1] == b'"' and raw.isascii() and b"\\" not in raw:
            return self._grep_bytes.search(raw[1:-1]) is not None
        assert self.grep is not None
        message = decode_value(json.loads(raw))
        if not isinstance(message, bytes):
            return False
        return self.grep.search(message.decode("utf-8", "surrogateescape")) is not None

    def index_groups(self, segment_index: index.SegmentIndex) -> list[list[bytes]]:
        """Index keys an entry must hold to match: one of each group (a superset test:
        :meth:`matches` still decides)."""
        groups = []
        if self.units:
            keys = list(self._unit_needles)
            if self._unit_globs:
                prefix = store.encode_name("_SYSTEMD_UNIT")
                for key in segment_index.keys_with_prefix(prefix):
                    value = json.loads(key[len(prefix) :])
                    if isinstance(value, str) and any(
                        fnmatch.fnmatchcase(value, glob) for glob in self._unit_globs
                    ):
                        keys.append(key)
            groups.append(keys)
        for name, needles in zip(self.fields, self._field_needles, strict=True):
            if name in index.INDEXED:
                groups.append(needles)
        if self.priorities is not None:
            groups.append([index.priority_key(priority) for priority in self.priorities])
        return groups

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


# Letters equal to a non-ASCII letter when case is ignored (dotted and dotless I, the long S,
# the Kelvin sign): a case-blind search of stored bytes would miss those.
_FOLDS_BEYOND_ASCII = frozenset("iIkKsS")
# Stored as themselves inside a JSON string: printable ASCII but the quote and backslash.
_VERBATIM = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
# Once this many lines matched, and most lines so far: -g gives up looking line by line.
_MOSTLY_MATCHED = 4096
_SEES_PAST_LINES = re.compile(r"\\[AZ]|\(\?<?!")
# A case-blind literal with letters is looked for in a lower-cased copy, which costs about
# as much as two searches: a run without letters this long is taken instead.
_PLAIN_RUN_PREFERRED = 4


def required_literal(
    pattern: re.Pattern[str], *, ascii_only: bool = False
) -> tuple[bytes, bool] | None:
    """Bytes every stored MESSAGE that ``pattern`` matches contains (the longest run of
    plain characters the pattern must match in sequence) and whether their case is
    ignored, or None.

    Such a run is stored verbatim inside the JSON string of the message, so finding it in a
    segment's bytes finds every entry that can match: -g then looks at those entries only.
    A message stored as an array of bytes (not UTF-8, or unprintable) has no such run and
    is looked at whatever it holds. With ``ascii_only``, the run holds for the messages of
    plain ASCII only (the others are looked at whatever they hold): its letters may then be
    any, even those a case-blind match equates with a letter beyond ASCII.
    """
    from re import _constants, _parser  # type: ignore[attr-defined]  # no public parser

    ignore_case = bool(pattern.flags & re.IGNORECASE)
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags & ~re.UNICODE)
    except (re.error, TypeError, ValueError):
        return None
    runs = []
    run = ""
    for op, value in [*parsed, (None, None)]:
        char = chr(value) if op is _constants.LITERAL else ""
        if (
            char
            and char in _VERBATIM
            and (ascii_only or not (ignore_case and char in _FOLDS_BEYOND_ASCII))
        ):
            run += char
            continue
        runs.append(run)
        run = ""
    best = max(runs, key=len)
    if ignore_case:
        plain = [piece for run in runs for piece in re.split("[A-Za-z]", run)]
        longest_plain = max(plain, key=len)
        if len(longest_plain) >= min(_PLAIN_RUN_PREFERRED, len(best)):
            best = longest_plain
    if len(best) < 3:
        return None
    return best.encode(), ignore_case and any(char.isalpha() for char in best)


# -- reading -------------------------------------------------------------------------------


class Position:
    """Where a reader stands: a segment (open, so rotation cannot pull it away) and an offset.

    ``last_seqnum`` is the seqnum of the last whole entry before ``offset`` (when known).
    """

    def __init__(self, path: Path, file: BinaryIO, offset: int, last_seqnum: int = 0) -> None:
        self.path = path
        self.file = file
        self.offset = offset
        self.last_seqnum = last_seqnum

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

    def _wanted(self, query: Query, up_to: int | None) -> list[tuple[Path, bool]]:
        """The segments that may hold an answer (oldest first), each with whether it is sealed.

        A segment's seqnums end where the next one's begin (its name), so a cursor or
        ``up_to`` rules segments out without opening them.
        """
        segments = self.segments()
        after = query.after_seqnum
        wanted = []
        for i, path in enumerate(segments):
            sealed = i + 1 < len(segments)
            if up_to is not None and store.segment_first_seqnum(path) > up_to:
                break
            if after is not None and sealed:
                if store.segment_first_seqnum(segments[i + 1]) <= after + 1:
                    continue
            wanted.append((path, sealed))
        return wanted

    def forward(self, query: Query, *, up_to: int | None = None) -> Iterator[list[Record]]:
        """Every matching entry, oldest first, a segment's worth at a time."""
        query.bind(self.journal_id)
        for path, sealed in self._wanted(query, up_to):
            if query.trivial and up_to is None:
                records = self._records(path, query)
            else:
                with _SegmentView(self, path, sealed, query, up_to) as view:
                    records = list(view.matching())
            if records:
                yield records

    def newest(self, count: int, query: Query, *, up_to: int | None = None) -> list[Record]:
        """The newest ``count`` matching entries (up to seqnum ``up_to``), oldest first.

        Walks back from the newest entry that may match, through the indexes: the cost
        follows the answer, not the journal.
        """
        query.bind(self.journal_id)
        found: list[Record] = []
        if count <= 0:
            return found
        for path, sealed in reversed(self._wanted(query, up_to)):
            with _SegmentView(self, path, sealed, query, up_to) as view:
                for record in view.matching(reverse=True):
                    found.append(record)
                    if len(found) >= count:
                        break
            if len(found) >= count:
                break
        found.reverse()
        return found

    def boots(self) -> list[tuple[str, int, int]]:
        """The boots in the journal, oldest first: (boot ID, first and last realtime µs).

        Read from the ``_BOOT_ID`` postings: the first and last entry of each boot per segment.
        """
        spans: dict[str, list[int]] = {}
        for path, sealed in self._wanted(Query(), None):
            with _SegmentView(self, path, sealed, Query(), None) as view:
                for boot, (first, first_rt, last, last_rt) in view.boots().items():
                    span = spans.get(boot)
                    if span is None:
                        spans[boot] = [first, first_rt, last, last_rt]
                        continue
                    if first < span[0]:
                        span[0:2] = first, first_rt
                    if last > span[2]:
                        span[2:4] = last, last_rt
        ordered = sorted(spans.items(), key=lambda item: item[1][0])
        return [(boot, span[1], span[3]) for boot, span in ordered]

    def end(self) -> Position | None:
        """The position after the last whole entry, where a follower starts."""
        for path in reversed(self.segments()):
            try:
                file = path.open("rb")
            except FileNotFoundError:
                continue
            # What a sound index covers is whole entries: only what follows is parsed.
            start, last = len(store.MAGIC), None
            found = index.load(path, file.fileno())
            if found is not None and found.count:
                start, last = found.covered_end, found.last_seqnum
            file.seek(start)
            data = file.read()
            offset, tail_last = store.valid_end(data, 0)
            offset += start
            if tail_last is not None:
                last = tail_last
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


class _SegmentView:
    """One segment, opened to answer a question: its index (when sound) and its bytes."""

    def __init__(
        self, journal: Journal, path: Path, sealed: bool, query: Query, up_to: int | None
    ) -> None:
        self.query = query
        self.up_to = up_to
        self.path = path
        self.sealed = sealed
        self.data: mmap.mmap | bytes = b""
        self.index: index.SegmentIndex | None = None
        self.fd = -1
        self.size = 0
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        size = os.fstat(self.fd).st_size
        if size <= len(store.MAGIC) or os.pread(self.fd, len(store.MAGIC), 0) != store.MAGIC:
            return
        self.size = size
        self.index = index.load(path, self.fd)
        # Mapped: a sealed segment whole, the newest only as far as its index covers. A
        # writer may cut a torn tail off the newest segment, and touching a mapped page
        # past the end of the file is fatal (SIGBUS): its tail is read, not mapped.
        mapped = size if sealed else (self.index.covered_end if self.index else 0)
        if mapped > len(store.MAGIC):
            self.data = mmap.mmap(self.fd, mapped, access=mmap.ACCESS_READ)
        if self.index is None:
            self._rebuild()

    def _tail(self, covered: int) -> list[Record]:
        """The whole entries after ``covered``, read from the file."""
        data = os.pread(self.fd, max(self.size - covered, 0), covered)
        return store.read_records(data, 0)[0]

    def _rebuild(self) -> None:
        """Index a sealed segment without a sound index (written before indexes, or by a
        writer that died) now, once, and keep the index for next time; a segment still
        being written is scanned instead, as its writer keeps its index."""
        self.index = None
        if self.sealed and os.access(self.path.parent, os.W_OK):
            self.index = index.build(self.path, self.data, save=True)

    def __enter__(self) -> _SegmentView:
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()
        if self.fd >= 0:
            os.close(self.fd)

    def boots(self) -> dict[str, tuple[int, int, int, int]]:
        """Each boot's first and last entry here: (seqnum, realtime, seqnum, realtime)."""
        found: dict[str, tuple[int, int, int, int]] = {}
        if not self.size:
            return found
        prefix = store.encode_name("_BOOT_ID")
        unpack = store.RECORD.unpack_from

        def note(key: bytes, first: tuple[int, int], last: tuple[int, int]) -> None:
            boot = json.loads(key[len(prefix) :])
            if not isinstance(boot, str):
                return
            had = found.get(boot)
            if had is not None:
                first = min(first, had[:2])
                last = max(last, had[2:])
            found[boot] = (*first, *last)

        covered = len(store.MAGIC)
        if self.index is not None:
            try:
                keys = self.index.keys_with_prefix(prefix)
                postings = [(key, self.index.array(key)) for key in keys]
                covered = self.index.covered_end
            except index.Damaged:
                postings = []
            for key, offsets in postings:
                if offsets:
                    first = unpack(self.data, offsets[0])[1:3]
                    last = unpack(self.data, offsets[-1])[1:3]
                    note(key, first, last)
        for record in self._tail(covered):
            for key in index.split(index.extract_keys(record[5], record[3])):
                if key.startswith(prefix):
                    note(key, record[:2], record[:2])
        return found

    def matching(self, *, reverse: bool = False) -> Iterator[Record]:
        """The segment's matching entries, in seqnum order or (``reverse``) newest first."""
        if not self.size:
            return
        covered = len(store.MAGIC)
        candidates: Iterable[int] = ()
        if self.index is not None:
            try:
                candidates = self._candidates(self.index, reverse)
                covered = self.index.covered_end
            except index.Damaged:
                self._rebuild()
                if self.index is not None:
                    candidates = self._candidates(self.index, reverse)
                    covered = self.index.covered_end
        # What no index covers (the newest frames, or all of a segment without one) is
        # scanned; whole frames only, as everywhere.
        tail = self._tail(covered)
        query = self.query
        up_to = self.up_to
        tail = [
            record
            for record in tail
            if query.matches(record) and (up_to is None or record[0] <= up_to)
        ]
        if reverse:
            yield from reversed(tail)
        data = self.data
        unpack = store.RECORD.unpack_from
        body_at = store.RECORD.size
        for offset in candidates:
            size, seqnum, realtime, monotonic, priority, flags = unpack(data, offset)
            record = (
                seqnum,
                realtime,
                monotonic,
                priority,
                flags,
                data[offset + body_at : offset + 4 + size],
            )
            if query.matches(record) and (up_to is None or seqnum <= up_to):
                yield record
        if not reverse:
            yield from tail

    def _candidates(self, found: index.SegmentIndex, reverse: bool) -> Iterable[int]:
        """Offsets of the indexed entries that may match, ascending or (``reverse``)
        descending. (Whatever is checked is read before this returns: a damaged index
        raises here, not while the offsets are walked.)"""
        candidates = self._ascending(found, reverse)
        if isinstance(candidates, Iterator):
            return candidates
        return reversed(candidates) if reverse else candidates

    def _ascending(self, found: index.SegmentIndex, reverse: bool) -> Sequence[int] | Iterator[int]:
        """:meth:`_candidates`, ascending; but for -g walking back, an iterator of them
        newest first, which finds no more than it is asked for."""
        query = self.query
        if found.count == 0:
            return ()
        # Whole-segment bounds first.
        if query.since is not None and found.max_realtime < query.since:
            return ()
        if query.until is not None and found.min_realtime > query.until:
            return ()
        if query.after_realtime is not None and found.max_realtime <= query.after_realtime:
            return ()
        if query.after_seqnum is not None and found.last_seqnum <= query.after_seqnum:
            return ()
        if self.up_to is not None and found.first_seqnum > self.up_to:
            return ()
        low, high = 0, found.count
        by_time = query.since, query.until, query.after_realtime
        if found.flags & index.SORTED_REALTIME and by_time != (None, None, None):
            realtimes = found.array(index.REALTIMES)
            if query.since is not None:
                low = max(low, bisect_left(realtimes, query.since))
            if query.until is not None:
                high = min(high, bisect_right(realtimes, query.until))
            if query.after_realtime is not None:
                low = max(low, bisect_right(realtimes, query.after_realtime))
        by_seqnum = query.after_seqnum is not None or self.up_to is not None
        if found.flags & index.SORTED_SEQNUM and by_seqnum:
            seqnums = found.array(index.SEQNUMS)
            if query.after_seqnum is not None:
                low = max(low, bisect_right(seqnums, query.after_seqnum))
            if self.up_to is not None:
                high = min(high, bisect_right(seqnums, self.up_to))
        if low >= high:
            return ()
        groups = query.index_groups(found)
        whole = low == 0 and high == found.count
        literal = query.grep_literal_ascii if found.has_messages else query.grep_literal
        if literal is None and query.grep_lines is not None and found.has_messages and not reverse:
            hits = self._grep_line_candidates(found, query.grep_lines, low, high)
            result = self._intersection(found, groups, [hits])
        elif literal is None:
            if not groups:
                return found.array(index.OFFSETS)[low:high]
            # The common question (-u, -p, -t, FIELD=VALUE): postings alone answer it.
            result = self._intersection(found, groups)
        elif reverse:
            return self._grep_newest_first(found, literal, low, high, groups)
        else:
            # What -g's literal finds is one more list the answer lies in.
            hits = self._grep_candidates(found, literal, low, high)
            result = self._intersection(found, groups, [hits])
        if whole:
            return result
        offsets = found.array(index.OFFSETS)
        start_offset = offsets[low]
        end_offset = offsets[high] if high < found.count else found.covered_end
        return result[bisect_left(result, start_offset) : bisect_left(result, end_offset)]

    @staticmethod
    def _intersection(
        found: index.SegmentIndex, groups: list[list[bytes]], extra: Sequence[Sequence[int]] = ()
    ) -> Sequence[int]:
        """Offsets holding a key of every group (and in every ``extra`` list), ascending."""
        sets: list[Sequence[int]] = list(extra)
        for keys in groups:
            arrays = [found.array(key) for key in dict.fromkeys(keys)]
            if len(arrays) == 1:
                sets.append(arrays[0])
            else:
                sets.append(sorted(set().union(*arrays)))
        sets.sort(key=len)
        result: Sequence[int] = sets[0]
        for other in sets[1:]:
            members = set(other)
            result = [offset for offset in result if offset in members]
        return result

    def _grep_candidates(
        self, found: index.SegmentIndex, literal: tuple[bytes, bool], low: int, high: int
    ) -> list[int]:
        """Offsets of the entries ``low``..``high`` (ordinals) holding the ``literal`` in
        their MESSAGE, and of those with a MESSAGE stored as bytes.

        The index keeps every MESSAGE as stored, one per line: the literal is looked for
        there, in place in the index's mapping, and a hit's line is its entry. (In an index
        written before it kept them, the literal is looked for in the segment's bytes.)
        The entries' positions are loaded only when needed: most segments have no hit.
        """
        text, ignore_case = literal
        hits = set(found.array(index.BINARY_MESSAGE))
        if ignore_case and found.has_messages and not _FOLDS_BEYOND_ASCII.isdisjoint(text.decode()):
            # The literal holds letters a message beyond ASCII may equal otherwise.
            hits.update(found.array(index.ODD_MESSAGE))
        count = found.count
        # Entry i's text starts at starts()[i] + shift in the haystack.
        haystack: bytes | mmap.mmap = self.data
        shift = 0
        end = found.covered_end
        starts_key = index.OFFSETS
        if found.has_messages:
            haystack, shift, end = found.messages()
            starts_key = index.MESSAGE_STARTS

        def starts() -> Sequence[int]:
            return found.array(starts_key)

        # (The first line of the messages starts at 0.)
        at = shift if low == 0 and found.has_messages else starts()[low] + shift
        stop = starts()[high] + shift if high < count else end
        if ignore_case:
            # Where its letters have no non-ASCII equals (see required_literal), a
            # lower-cased copy holds the lower-cased text wherever any case of it is. (The
            # regex engine's case-blind search is ten times slower than this.)
            haystack = haystack[at:stop].lower()
            text = text.lower()
            shift -= at
            at, stop = 0, stop - at
        find = haystack.find
        while True:
            at = find(text, at, stop)
            if at < 0:
                break
            positions = starts()
            ordinal = bisect_right(positions, at - shift) - 1
            hits.add(found.array(index.OFFSETS)[ordinal])
            # One hit is enough: go on from the next entry.
            ordinal += 1
            if ordinal >= count:
                break
            at = positions[ordinal] + shift
        return sorted(hits)

    def _grep_line_candidates(
        self, found: index.SegmentIndex, pattern: re.Pattern[bytes], low: int, high: int
    ) -> list[int]:
        """Offsets of the entries ``low``..``high`` (ordinals) whose line in the index's
        messages ``pattern`` matches (a superset of those whose message matches -g's
        pattern), and of those whose line is not their message (bytes, escapes, beyond
        ASCII). One search per matching entry; none for the others."""
        hits = set(found.array(index.BINARY_MESSAGE))
        hits.update(found.array(index.ODD_MESSAGE))
        haystack, shift, end = found.messages()
        count = found.count

        def starts() -> Sequence[int]:
            return found.array(index.MESSAGE_STARTS)

        # Line i spans starts[i] + shift up to the newline before line i + 1 (the first
        # starts at 1, after a newline, so that ``^`` holds there).
        at = shift + 1 if low == 0 else starts()[low] + shift
        stop = starts()[high] - 1 + shift if high < count else end
        search = pattern.search
        found_lines = 0
        while at <= stop:
            match = search(haystack, at, stop)
            if match is None:
                break
            positions = starts()
            offsets = found.array(index.OFFSETS)
            ordinal = max(bisect_right(positions, match.start() - shift) - 1, low)
            hits.add(offsets[ordinal])
            found_lines += 1
            # One match is enough: go on from the next line.
            ordinal += 1
            if ordinal >= count:
                break
            if found_lines >= _MOSTLY_MATCHED and found_lines * 2 > ordinal - low:
                # Most lines match: the rest are all looked at, without a search each.
                hits.update(offsets[ordinal:high])
                break
            at = positions[ordinal] + shift
        return sorted(hits)

    def _grep_newest_first(
        self,
        found: index.SegmentIndex,
        literal: tuple[bytes, bool],
        low: int,
        high: int,
        groups: list[list[bytes]],
    ) -> Iterator[int]:
        """What :meth:`_grep_candidates` finds (and-ed with the postings ``groups``), newest
        first, found one by one from the end: `-g X -n N` stops once it has N."""
        text, ignore_case = literal
        extra = set(found.array(index.BINARY_MESSAGE))
        haystack: bytes | mmap.mmap = self.data
        shift = 0
        end = found.covered_end
        starts_key = index.OFFSETS
        if found.has_messages:
            haystack, shift, end = found.messages()
            starts_key = index.MESSAGE_STARTS
            if ignore_case and not _FOLDS_BEYOND_ASCII.isdisjoint(text.decode()):
                extra.update(found.array(index.ODD_MESSAGE))
        starts = found.array(starts_key)
        offsets = found.array(index.OFFSETS)
        members = set(self._intersection(found, groups)) if groups else None
        count = found.count
        at = shift if low == 0 and found.has_messages else starts[low] + shift
        stop = starts[high] + shift if high < count else end
        first = offsets[low]
        last = offsets[high] if high < count else found.covered_end
        others = sorted(offset for offset in extra if first <= offset < last)
        if ignore_case:
            haystack = haystack[at:stop].lower()  # as in _grep_candidates
            text = text.lower()
            shift -= at
            at, stop = 0, stop - at

        def walk() -> Iterator[int]:
            rfind = haystack.rfind
            position = stop
            while True:
                hit = rfind(text, at, position)
                if hit < 0:
                    break
                ordinal = bisect_right(starts, hit - shift) - 1
                offset = offsets[ordinal]
                while others and others[-1] >= offset:
                    other = others.pop()
                    if other != offset and (members is None or other in members):
                        yield other
                if members is None or offset in members:
                    yield offset
                # Look before this entry next.
                position = starts[ordinal] + shift
            for other in reversed(others):
                if members is None or other in members:
                    yield other

        return walk()


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
        import ctypes.util  # here: a reader that does not follow never pays for it

        self.directory = directory
        self.fd = -1
        self.gone = False
        """The directory that was watched has been removed or moved away from its path."""
        self._wd = -1
        self._identity: tuple[int, int] | None = None
        self._libc: ctypes.CDLL | None = None
        self._errno = ctypes.get_errno
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
                elif self._errno() in (errno.ENOENT, errno.ENOTDIR):
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
