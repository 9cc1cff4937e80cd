"""Per-segment indexes: an indexed answer is the full scan's answer, whatever the journal."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustertui.backend.journal import index, store
from clustertui.backend.journal.fmt import record_fields
from clustertui.backend.journal.reader import Journal, Query
from clustertui.backend.journal.writer import JournalWriter

BOOTS = ["b0" * 16, "b1" * 16]
UNITS = ["web0.service", "web1.service", "rare.service", 'we"b.service', "wéb.service"]
IDENTIFIERS = ["web", "rare", "cron", "a\\b"]
WORDS = [
    "GET /items/42 200",
    "item 7 ITEM",
    "disk on fire",
    "é accent",
    'quote " and \\ slash',
    "tab\tand\x01control",
    "",
    "trailing 123",
    "FULL ERROR",
    "line one\nline two",
    "\u017fystem \u0131tem \u212a up",
    "Disk full on /items",
    "DISK 42",
]
PATTERNS = [
    "item",
    "ITEM",
    "^GET",
    r"\d{3}$",
    "é",
    r'["\\]',
    "fire|accent",
    r"\s",
    ".",
    "control",
    r"and \\ slash",
    "on fire",
    "ems/4",
    "error",
    "(?i)ERROR",
    "disk",
    "system",
    "^line two",
    "one$",
    "^Disk",
    "full on /items$",
    "items",
]
# Pieces of random patterns: words in every case (a capital makes the pattern case
# sensitive), letters with non-ASCII equals, classes, anchors inside and out.
PIECES = [
    "item", "ITEM", "Item", "disk", "DISK", "fire", "one", "two", "line", "GET", "get",
    "full on", "/items", "ystem", "é", "\u017f", "k", "s", "i", "\\d+", ".", "\\s", "[a-z]",
    "(on|tw)", " ", "/", "42", "ems/4", "\\n", "^", "$", "\\b", "\\A", "\\Z", "(?!e)",
    "(?<!t)", "(?=o)", "[^a]", "e*", "\\w+", "(fire|disk)", '"', "\\\\",
]  # fmt: skip


@st.composite
def patterns(draw: st.DrawFn) -> str:
    pattern = "^" if draw(st.booleans()) else ""
    pattern += "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=3)))
    return pattern + ("$" if draw(st.booleans()) else "")


# -- the oracle: every entry decoded, nothing indexed --------------------------------------


def scan(data_dir: Path) -> list[store.Record]:
    """Every whole entry of the journal, by reading every segment frame by frame."""
    records: list[store.Record] = []
    for path in store.list_segments(data_dir / "journal"):
        data = path.read_bytes()
        if data.startswith(store.MAGIC):
            records += store.read_records(data, len(store.MAGIC))[0]
    return records


def values(record: store.Record, name: str) -> list[bytes]:
    pairs = json.loads(b"{" + record[5] + b"}", object_pairs_hook=list)
    found = []
    for key, value in pairs:
        if key == name:
            found.append(value.encode() if isinstance(value, str) else bytes(value))
    return found


def oracle(record: store.Record, query: Query, journal_id: str) -> bool:
    seqnum, realtime, _mono, priority, _flags, body = record
    if query.priorities is not None and priority not in query.priorities:
        return False
    if query.since is not None and realtime < query.since:
        return False
    if query.until is not None and realtime > query.until:
        return False
    if query.after is not None:
        cursor_id, after_seqnum, after_realtime = query.after
        if cursor_id == journal_id and after_seqnum is not None:
            if seqnum <= after_seqnum:
                return False
        elif realtime <= (after_realtime or 0):
            return False
    if query.units:
        exact = {u.encode() for u in query.units if not any(c in u for c in "*?[")}
        globs = [u for u in query.units if any(c in u for c in "*?[")]
        held = set(values(record, "_SYSTEMD_UNIT")) | set(values(record, "UNIT"))
        last = json.loads(b"{" + body + b"}").get("_SYSTEMD_UNIT")
        if not (
            exact & held
            or (isinstance(last, str) and any(fnmatch.fnmatchcase(last, g) for g in globs))
        ):
            return False
    for name, wanted in query.fields.items():
        if not set(wanted) & set(values(record, name)):
            return False
    if query.grep is not None:
        message = record_fields(record).get("MESSAGE")
        if not isinstance(message, bytes):
            return False
        if query.grep.search(message.decode("utf-8", "surrogateescape")) is None:
            return False
    return True


# -- random journals -----------------------------------------------------------------------

text = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
raw = st.one_of(text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=6))

line_entry = st.tuples(
    st.just("line"),
    raw,
    st.sampled_from([*UNITS, None]),
    st.sampled_from([*IDENTIFIERS, None]),
    st.sampled_from([42, 4242, None]),
    st.integers(0, 7),
    st.integers(1, 60),
)
field = st.one_of(
    st.tuples(st.sampled_from(["_SYSTEMD_UNIT", "UNIT"]), st.sampled_from(UNITS).map(str.encode)),
    st.tuples(st.just("SYSLOG_IDENTIFIER"), st.sampled_from(IDENTIFIERS).map(str.encode)),
    st.tuples(st.just("PRIORITY"), st.sampled_from([b"0", b"3", b"6", b"9", b"x"])),
    st.tuples(st.just("_PID"), st.sampled_from([b"42", b"4242"])),
    st.tuples(st.just("_BOOT_ID"), st.sampled_from(BOOTS).map(str.encode)),
    st.tuples(st.just("MESSAGE"), raw),
    st.tuples(st.just("OTHER"), raw),
)
append_entry = st.tuples(
    st.just("append"), st.lists(field, max_size=6), st.integers(0, 40), st.booleans()
)
action = st.one_of(line_entry, line_entry, append_entry, st.just(("flush",)))
damage = st.sampled_from(["none", "delete", "truncate", "flip", "stale", "swap", "empty"])


def write_journal(
    data_dir: Path,
    actions: list[tuple[object, ...]],
    max_bytes: int,
    torn_tail: bytes,
    damages: list[str],
) -> None:
    writer = JournalWriter(
        data_dir, hostname="h", machine_id="ab" * 16, boot_id=BOOTS[0], max_bytes=max_bytes
    )
    base = 1_700_000_000_000_000
    clock = 0
    snapshots: dict[Path, bytes] = {}
    for act in actions:
        if act[0] == "line":
            _, message, unit, identifier, pid, priority, repeat = act
            # A burst of lines: journals of many segments from short examples.
            for i in range(repeat):
                line = message if i == 0 else message + b" %d" % i
                writer.line(line, unit=unit, identifier=identifier, pid=pid, priority=priority)
        elif act[0] == "append":
            _, fields, step, backwards = act
            clock += step
            # Some entries go back in time: a segment's realtimes need not be sorted.
            at = base + (clock - 3 * step if backwards else clock) * 1_000_000
            writer.append(fields, realtime=at, monotonic=clock)
        else:
            writer.flush()
            for path in (data_dir / "journal").glob("*.idx"):
                snapshots.setdefault(path, path.read_bytes())
    writer.close()
    directory = data_dir / "journal"
    segments = store.list_segments(directory)
    for path in segments:
        # What the writer kept (from the fields it was given) is what a rebuild from the
        # segment's bytes makes (from the fields as stored).
        rebuilt = index.Builder()
        rebuilt.add_data(path.read_bytes()[len(store.MAGIC) :], len(store.MAGIC))
        assert index.index_path(path).read_bytes() == rebuilt.serialize(), path.name
    for path, how in zip(segments, damages, strict=False):
        idx = index.index_path(path)
        if not idx.exists() or how == "none":
            continue
        data = idx.read_bytes()
        if how == "delete":
            idx.unlink()
        elif how == "truncate":
            idx.write_bytes(data[: len(data) // 2])
        elif how == "flip":
            at = len(data) - 1 - (len(data) // 3)
            idx.write_bytes(data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :])
        elif how == "stale" and idx in snapshots:
            idx.write_bytes(snapshots[idx])
        elif how == "swap" and len(segments) > 1:
            other = index.index_path(segments[0] if path != segments[0] else segments[1])
            if other.exists():
                idx.write_bytes(other.read_bytes())
        elif how == "empty":
            idx.write_bytes(b"")
    if segments and torn_tail:
        # A writer that died inside write(): a frame header promising more than is there.
        with segments[-1].open("ab") as f:
            f.write(store.FRAME.pack(len(torn_tail) + 100, 0) + torn_tail)


DIMENSIONS = {
    "units": st.lists(st.sampled_from([*UNITS, "web*", "rare", "w?b1*"]), min_size=1, max_size=2),
    "identifiers": st.lists(st.sampled_from(IDENTIFIERS), min_size=1, max_size=2),
    "fields": st.lists(field, min_size=1, max_size=2),
    "priorities": st.frozensets(st.integers(0, 7), max_size=4),
    "since": st.integers(-5, 45),
    "until": st.integers(-5, 45),
    "grep": st.one_of(st.sampled_from(PATTERNS), patterns()),
    "after": st.one_of(st.integers(0, 300), st.integers(-5, 45)),
}
EMPTY: dict[str, object] = {
    "units": [],
    "identifiers": [],
    "fields": [],
    "priorities": None,
    "since": None,
    "until": None,
    "grep": None,
    "after": None,
}


@st.composite
def queries(draw: st.DrawFn) -> dict[str, object]:
    """A question with one or two conditions, so that many questions have answers."""
    spec = dict(EMPTY)
    for name in draw(st.sets(st.sampled_from(sorted(DIMENSIONS)), max_size=2)):
        spec[name] = draw(DIMENSIONS[name])
    spec["after_kind"] = draw(st.sampled_from(["seqnum", "time", "foreign"]))
    spec["count"] = draw(st.one_of(st.none(), st.integers(0, 30)))
    spec["up_to"] = draw(st.one_of(st.none(), st.integers(0, 300)))
    # --case-sensitive: journalctl's rule by default (capitals make it case sensitive).
    spec["case"] = draw(st.sampled_from(["auto", "auto", "yes", "no"]))
    return spec


def make_query(spec: dict[str, object], journal_id: str) -> Query:
    base = 1_700_000_000_000_000
    fields: dict[str, list[bytes]] = {}
    for name, value in spec["fields"]:  # type: ignore[attr-defined]
        fields.setdefault(name, []).append(value)
    for identifier in spec["identifiers"]:  # type: ignore[attr-defined]
        fields.setdefault("SYSLOG_IDENTIFIER", []).append(identifier.encode())
    grep = None
    if spec["grep"] is not None:
        pattern = str(spec["grep"])
        case = spec.get("case", "auto")
        sensitive = any(c.isupper() for c in pattern) if case == "auto" else case == "yes"
        grep = re.compile(pattern, 0 if sensitive else re.IGNORECASE)
    after = None
    if spec["after"] is not None:
        n = int(spec["after"])  # type: ignore[call-overload]
        if spec["after_kind"] == "seqnum":
            after = (journal_id, max(n, 0), None)
        elif spec["after_kind"] == "time":
            after = (journal_id, None, base + n * 1_000_000)
        else:
            after = ("f" * 32, max(n, 0), base + n * 1_000_000)

    def at(n: object) -> int | None:
        return None if n is None else base + int(n) * 1_000_000  # type: ignore[call-overload]

    return Query(
        units=list(spec["units"]),  # type: ignore[call-overload]
        fields=fields,
        priorities=spec["priorities"],  # type: ignore[arg-type]
        since=at(spec["since"]),
        until=at(spec["until"]),
        grep=grep,
        after=after,
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    actions=st.lists(action, min_size=0, max_size=60),
    max_bytes=st.sampled_from([1 << 15, 1 << 16, 1 << 30]),
    torn_tail=st.one_of(st.just(b""), st.binary(min_size=1, max_size=40)),
    damages=st.lists(damage, max_size=8),
    specs=st.lists(queries(), min_size=4, max_size=12),
)
def test_an_indexed_answer_is_the_full_scan_answer(
    actions: list[tuple[object, ...]],
    max_bytes: int,
    torn_tail: bytes,
    damages: list[str],
    specs: list[dict[str, object]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_journal(data_dir, actions, max_bytes, torn_tail, damages)
        every = scan(data_dir)
        journal = Journal(data_dir)
        # Where a follower starts: after the last whole entry, wherever the index ends.
        position = journal.end()
        segments = store.list_segments(data_dir / "journal")
        if segments:
            assert position is not None
            data = segments[-1].read_bytes()
            offset, last = store.valid_end(data, len(store.MAGIC))
            expected_last = store.segment_first_seqnum(segments[-1]) - 1 if last is None else last
            assert (position.path, position.offset) == (segments[-1], offset)
            assert position.last_seqnum == expected_last
            position.close()
        # Besides the random questions, a sweep: each unit, identifier, priority alone,
        # each -g pattern, and cursors on both sides of every segment boundary.
        sweep: list[dict[str, object]] = []
        for unit in UNITS:
            sweep.append({**EMPTY, "units": [unit]})
        for identifier in IDENTIFIERS:
            sweep.append({**EMPTY, "identifiers": [identifier]})
        for priority in range(8):
            sweep.append({**EMPTY, "priorities": frozenset([priority])})
        for pattern in PATTERNS:
            sweep.append({**EMPTY, "grep": pattern})
        for path in store.list_segments(data_dir / "journal"):
            first = store.segment_first_seqnum(path)
            for after in (first - 2, first - 1, first):
                sweep.append({**EMPTY, "after": after, "after_kind": "seqnum"})
                sweep.append({**EMPTY, "up_to": after, "count": 3})
        for spec in sweep:
            spec.setdefault("after_kind", "seqnum")
            spec.setdefault("up_to", None)
            spec.setdefault("count", None)
        for spec in specs + sweep:
            query = make_query(spec, journal.journal_id)
            up_to = spec["up_to"]
            expected = [
                record
                for record in every
                if oracle(record, query, journal.journal_id)
                and (up_to is None or record[0] <= up_to)  # type: ignore[operator]
            ]
            count = spec["count"]
            if count is None:
                got = [r for batch in journal.forward(query, up_to=up_to) for r in batch]  # type: ignore[arg-type]
                assert got == expected, spec
            else:
                got = journal.newest(count, query, up_to=up_to)  # type: ignore[arg-type]
                assert got == (expected[-count:] if count else []), spec  # type: ignore[operator]


# -- what the writer keeps -----------------------------------------------------------------


def busy_journal(data_dir: Path, count: int = 6000) -> None:
    with JournalWriter(data_dir, hostname="h", machine_id="ab" * 16, max_bytes=4 << 20) as w:
        for i in range(count):
            unit = "rare.service" if i % 1000 == 500 else f"web{i % 7}.service"
            w.line(b"GET /items/%d" % i, unit=unit, identifier="web", pid=100 + i % 7)


def test_each_segment_has_the_index_a_rebuild_from_its_bytes_would_make(tmp_path: Path) -> None:
    busy_journal(tmp_path)
    segments = store.list_segments(tmp_path / "journal")
    assert len(segments) > 3
    for path in segments:
        rebuilt = index.Builder()
        rebuilt.add_data(path.read_bytes()[len(store.MAGIC) :], len(store.MAGIC))
        assert index.index_path(path).read_bytes() == rebuilt.serialize(), path.name
    # Rotation deletes a segment's index with it.
    names = {p.name for p in (tmp_path / "journal").iterdir()}
    indexes = {n for n in names if n.endswith(".idx")}
    assert indexes == {index.index_path(p).name for p in segments}


@pytest.fixture
def looked_at(monkeypatch: pytest.MonkeyPatch) -> tuple[list[store.Record], list[store.Record]]:
    """(entries scanned frame by frame, entries a question's filter looked at)."""
    scanned: list[store.Record] = []
    matched: list[store.Record] = []
    real = store.read_records
    real_matches = Query.matches

    def counting(data: bytes, offset: int) -> tuple[list[store.Record], int]:
        records, end = real(data, offset)
        scanned.extend(records)
        return records, end

    def counting_matches(self: Query, record: store.Record) -> bool:
        matched.append(record)
        return real_matches(self, record)

    monkeypatch.setattr(store, "read_records", counting)
    monkeypatch.setattr(Query, "matches", counting_matches)
    return scanned, matched


def test_a_filtered_question_reads_only_the_entries_it_shows(
    tmp_path: Path, looked_at: tuple[list[store.Record], list[store.Record]]
) -> None:
    busy_journal(tmp_path)
    scanned, matched = looked_at
    got = Journal(tmp_path).newest(3, Query(units=["rare"]))
    assert [record_fields(r)["MESSAGE"] for r in got] == [
        b"GET /items/3500",
        b"GET /items/4500",
        b"GET /items/5500",
    ]
    # Nothing scanned frame by frame (every segment is indexed), and only the three
    # entries shown were looked at.
    assert scanned == [] and len(matched) == 3


def test_times_and_cursors_skip_segments_and_bisect_inside_one(
    tmp_path: Path, looked_at: tuple[list[store.Record], list[store.Record]]
) -> None:
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16, max_bytes=1 << 19) as w:
        for i in range(6000):
            w.append([("MESSAGE", b"entry %d" % i)], realtime=1_000_000 * (i + 1), monotonic=i)
    assert len(store.list_segments(tmp_path / "journal")) > 3
    scanned, matched = looked_at
    journal = Journal(tmp_path)

    def numbers(records: list[store.Record]) -> list[int]:
        return [int(record_fields(r)["MESSAGE"].split()[1]) for r in records]  # type: ignore[union-attr]

    # -S T -U T': only the entries between, wherever they lie.
    window = Query(since=1_000_000 * 2001, until=1_000_000 * 2010)
    assert numbers([r for b in journal.forward(window) for r in b]) == list(range(2000, 2010))
    assert scanned == [] and len(matched) == 10
    matched.clear()
    # -S T -n 3 and --after-cursor C -n 3: the newest three, looking at three.
    assert numbers(journal.newest(3, Query(since=1_000_000 * 3000))) == [5997, 5998, 5999]
    cursor = (journal.journal_id, 1234, None)
    after = [r for b in journal.forward(Query(after=cursor)) for r in b]
    assert numbers(after[:2]) == [1234, 1235] and len(after) == 6000 - 1234
    assert scanned == [] and len(matched) == 3 + len(after)
    matched.clear()
    # -U T -r -n 2: walks back from T, not from the end.
    assert numbers(journal.newest(2, Query(until=1_000_000 * 100))) == [98, 99]
    assert len(matched) == 2


def test_a_damaged_index_is_not_trusted_and_is_rebuilt(tmp_path: Path) -> None:
    busy_journal(tmp_path)
    segments = store.list_segments(tmp_path / "journal")
    first = index.index_path(segments[0])
    good = first.read_bytes()
    # Point every posting of the rare unit elsewhere, keeping the file's length: only the
    # checksums can tell.
    key = index.field_key("_SYSTEMD_UNIT", b"rare.service")
    loaded = index.SegmentIndex(good)
    start, count, _crc = loaded.sections[key]
    assert count == 2
    forged = loaded.array(index.OFFSETS)[0].to_bytes(4, "little")
    first.write_bytes(good[:start] + forged + good[start + 4 :])
    got = Journal(tmp_path).newest(100, Query(units=["rare"]))
    assert [record_fields(r)["MESSAGE"] for r in got] == [
        b"GET /items/%d" % i for i in range(500, 6000, 1000)
    ]
    assert first.read_bytes() == good


def test_an_index_left_behind_by_a_crash_covers_less_and_the_rest_is_scanned(
    tmp_path: Path,
) -> None:
    writer = JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16)
    writer.line(b"one", unit="rare.service", identifier="x", pid=1)
    writer.flush()
    writer.close()
    segment = store.list_segments(tmp_path / "journal")[-1]
    early = index.index_path(segment).read_bytes()
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16) as writer:
        writer.line(b"two", unit="rare.service", identifier="x", pid=1)
    # The writer "died" before its last save: the index covers the first entry only.
    index.index_path(segment).write_bytes(early)
    got = Journal(tmp_path).newest(5, Query(units=["rare"]))
    assert [record_fields(r)["MESSAGE"] for r in got] == [b"one", b"two"]


# -- -g: match, then decode ------------------------------------------------------------------


def grep_journal(data_dir: Path) -> None:
    """6,000 entries of units whose names hold "web" and "disk"; the messages hold neither,
    but for three entries; one message is beyond ASCII."""
    with JournalWriter(data_dir, hostname="h", machine_id="ab" * 16, max_bytes=4 << 20) as w:
        for i in range(6000):
            message = b"GET /items/%d" % i
            if i in (1500, 4500):
                message = b"Disk full on /items/%d" % i
            elif i == 5000:
                message = "\u017fystem DI\u017fK \u0131tem \u212a up".encode()
            w.line(message, unit=f"web{i % 7}-disk.service", identifier="web", pid=100 + i % 7)


def grepped(pattern: str) -> Query:
    sensitive = any(char.isupper() for char in pattern)
    return Query(grep=re.compile(pattern, 0 if sensitive else re.IGNORECASE))


def messages(records: list[store.Record]) -> list[bytes]:
    return [record_fields(r)["MESSAGE"] for r in records]  # type: ignore[misc]


def test_grep_looks_only_at_entries_whose_message_holds_the_pattern(
    tmp_path: Path, looked_at: tuple[list[store.Record], list[store.Record]]
) -> None:
    grep_journal(tmp_path)
    assert len(store.list_segments(tmp_path / "journal")) > 3
    scanned, matched = looked_at
    journal = Journal(tmp_path)
    # Every entry's unit holds "web": not one entry is looked at, as no message does.
    assert [r for b in journal.forward(grepped("web")) for r in b] == []
    assert scanned == [] and matched == []
    # "disk" (whose i and s a case-blind match equates with letters beyond ASCII): the
    # two messages holding it, and the one message beyond ASCII, are looked at.
    got = [r for b in journal.forward(grepped("disk")) for r in b]
    assert messages(got) == [
        b"Disk full on /items/1500",
        b"Disk full on /items/4500",
        "\u017fystem DI\u017fK \u0131tem \u212a up".encode(),
    ]
    assert scanned == [] and len(matched) == 3
    matched.clear()
    # A capital: case sensitive; walking back stops at the newest match.
    assert messages(journal.newest(1, grepped("Disk"))) == [b"Disk full on /items/4500"]
    assert len(matched) == 1
    matched.clear()
    # No literal at all: the pattern runs over the index's lines at once; the entries whose
    # line matches, and the one whose line is not its message (beyond ASCII), are looked at.
    got = [r for b in journal.forward(grepped("^d.sk f|f.re$")) for r in b]
    assert messages(got) == [b"Disk full on /items/1500", b"Disk full on /items/4500"]
    assert len(matched) == 3
    matched.clear()
    # Case blind, but its longest run without letters ("/599") is looked for instead,
    # with no lower-cased copy: the entries holding that run are looked at.
    got = [r for b in journal.forward(grepped("items/599[0-9]")) for r in b]
    assert messages(got) == [b"GET /items/%d" % i for i in range(5990, 6000)]
    assert messages(matched) == [b"GET /items/599", *messages(got)]


def without_messages(path: Path) -> None:
    """Rewrite the index at ``path`` as a writer before the messages were kept wrote it."""
    data = path.read_bytes()
    loaded = index.SegmentIndex(data)
    dropped = (index.MESSAGES, index.MESSAGE_STARTS, index.ODD_MESSAGE)
    directory, blobs, position = [], [], 0
    for key, (start, count, crc) in loaded.sections.items():
        if key in dropped:
            continue
        size = count * (8 if key in (index.SEQNUMS, index.REALTIMES) else 4)
        blob = data[start : start + size]
        directory.append(index.ENTRY.pack(len(key), position, count, crc) + key)
        blobs.append(blob)
        position += len(blob)
    dir_bytes = b"".join(directory)
    header = list(index.HEADER.unpack_from(data, len(index.MAGIC)))
    header[-2:] = [len(dir_bytes), zlib.crc32(dir_bytes)]
    packed = index.HEADER.pack(*header)
    path.write_bytes(
        index.MAGIC
        + packed
        + index.HEADER_CRC.pack(zlib.crc32(packed))
        + dir_bytes
        + b"".join(blobs)
    )


@pytest.mark.parametrize("pattern", ["disk", "Disk", "items/599[0-9]", "system", "^GET /items/42$"])
def test_grep_in_segments_indexed_before_messages_were_kept(tmp_path: Path, pattern: str) -> None:
    grep_journal(tmp_path)
    journal = Journal(tmp_path)
    expected = [r for b in journal.forward(grepped(pattern)) for r in b]
    assert expected
    for path in store.list_segments(tmp_path / "journal"):
        without_messages(index.index_path(path))
        loaded = index.load(path, os.open(path, os.O_RDONLY))
        assert loaded is not None and not loaded.has_messages
    assert [r for b in journal.forward(grepped(pattern)) for r in b] == expected
    assert journal.newest(1, grepped(pattern)) == expected[-1:]
    # A writer resuming such an index indexes its segment again, messages included.
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16, max_bytes=4 << 20) as w:
        w.line(b"GET /items/42", unit="web0.service", identifier="web", pid=1)
    newest = store.list_segments(tmp_path / "journal")[-1]
    rebuilt = index.Builder()
    rebuilt.add_data(newest.read_bytes()[len(store.MAGIC) :], len(store.MAGIC))
    assert index.index_path(newest).read_bytes() == rebuilt.serialize()


def test_grep_finds_the_first_and_last_message_of_every_segment(tmp_path: Path) -> None:
    grep_journal(tmp_path)
    journal = Journal(tmp_path)
    every = scan(tmp_path)
    edges = set()
    for path in store.list_segments(tmp_path / "journal"):
        data = path.read_bytes()
        records = store.read_records(data, len(store.MAGIC))[0]
        edges |= {records[0][0], records[-1][0]}
    assert len(edges) > 6
    for record in every:
        if record[0] not in edges:
            continue
        message = messages([record])[0].decode()
        # No run of three plain characters: the pattern runs over the lines at once.
        dotted = "".join(c if i % 2 else "." for i, c in enumerate(message))
        assert Query(grep=re.compile(dotted)).grep_literal_ascii is None
        for pattern in (
            re.escape(message),
            "^" + re.escape(message) + "$",
            message.lower(),
            "^" + dotted + "$",
        ):
            query = grepped(pattern)
            got = [r for b in journal.forward(query) for r in b]
            assert record in got, pattern
            # And inside a time window that starts or ends at the entry.
            window = Query(grep=query.grep, since=record[1], until=record[1])
            assert [r for b in journal.forward(window) for r in b] == [record], pattern


def test_grep_without_a_literal_over_a_segment_where_most_lines_match(tmp_path: Path) -> None:
    # One segment of 10,000 entries, 9 in 10 of them matching: past 4,096 matching lines
    # the rest of the segment is looked at entry by entry, without a search per line.
    with JournalWriter(tmp_path, hostname="h", machine_id="ab" * 16) as w:
        for i in range(10_000):
            verb = b"POST" if i % 10 == 0 or i == 9_999 else b"GET"
            w.line(verb + b" /items/%d" % i, unit="web.service", identifier="web", pid=1)
    assert len(store.list_segments(tmp_path / "journal")) == 1
    query = grepped("^G.T./")
    assert query.grep_literal_ascii is None and query.grep_lines is not None
    expected = [r for r in scan(tmp_path) if oracle(r, query, "")]
    assert len(expected) == 8_999
    assert [r for b in Journal(tmp_path).forward(query) for r in b] == expected
