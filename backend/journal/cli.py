"""Reads the journal: `clusterd journal`, with journalctl's flags and output formats."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from clustertui.backend.journal.fmt import FORMATS, Formatter, cursor, parse_cursor
from clustertui.backend.journal.reader import DirectoryWatch, Journal, Position, Query
from clustertui.backend.journal.store import Record

PRIORITY_NAMES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
# Older spellings syslog and journalctl still accept.
PRIORITY_ALIASES = {"panic": 0, "error": 3, "warn": 4}
DEFAULT_DATA_DIR = "/var/lib/clusterd"
_SPAN_UNITS = {
    "us": 1,
    "usec": 1,
    "µs": 1,
    "ms": 1_000,
    "msec": 1_000,
    "s": 1_000_000,
    "sec": 1_000_000,
    "second": 1_000_000,
    "seconds": 1_000_000,
    "m": 60_000_000,
    "min": 60_000_000,
    "minute": 60_000_000,
    "minutes": 60_000_000,
    "h": 3_600_000_000,
    "hr": 3_600_000_000,
    "hour": 3_600_000_000,
    "hours": 3_600_000_000,
    "d": 86_400_000_000,
    "day": 86_400_000_000,
    "days": 86_400_000_000,
    "w": 604_800_000_000,
    "week": 604_800_000_000,
    "weeks": 604_800_000_000,
    "M": 2_629_800_000_000,
    "month": 2_629_800_000_000,
    "months": 2_629_800_000_000,
    "y": 31_557_600_000_000,
    "year": 31_557_600_000_000,
    "years": 31_557_600_000_000,
}
_SPAN_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)")
_ABSOLUTE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


class UsageError(ValueError):
    """A flag's value that journalctl would refuse too."""


def parse_priority(text: str) -> int:
    name = text.strip().lower()
    if name.isdigit() and int(name) <= 7:
        return int(name)
    if name in PRIORITY_NAMES:
        return PRIORITY_NAMES[name]
    if name in PRIORITY_ALIASES:
        return PRIORITY_ALIASES[name]
    raise UsageError(f"unknown priority {text!r}: use 0-7 or one of {', '.join(PRIORITY_NAMES)}")


def parse_priorities(text: str) -> frozenset[int]:
    """``err`` -> err and more important; ``FROM..TO`` -> that range, both ends included."""
    if ".." in text:
        low, _, high = text.partition("..")
        a, b = parse_priority(low), parse_priority(high)
        return frozenset(range(min(a, b), max(a, b) + 1))
    return frozenset(range(parse_priority(text) + 1))


def _timespan(text: str) -> int:
    total = 0
    position = 0
    while position < len(text):
        match = _SPAN_PART.match(text, position)
        if not match or match.end() == position:
            raise UsageError(f"{text!r} is not a time span such as 1h, 30min or 2d")
        number, unit = match.groups()
        if unit not in _SPAN_UNITS and unit.lower() not in _SPAN_UNITS:
            if unit:
                raise UsageError(f"unknown time unit {unit!r} in {text!r}")
        factor = _SPAN_UNITS.get(unit) or _SPAN_UNITS.get(unit.lower()) or 1_000_000
        total += int(float(number) * factor)
        position = match.end()
    return total


def parse_time(text: str, now: float | None = None) -> int:
    """journalctl's --since/--until values, as µs since the epoch (local time)."""
    now = time.time() if now is None else now
    value = text.strip()
    local = time.localtime(now)
    midnight = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    day = 86_400
    named = {
        "now": now,
        "today": midnight,
        "yesterday": time.mktime(
            (local.tm_year, local.tm_mon, local.tm_mday - 1, 0, 0, 0, 0, 0, -1)
        ),
        "tomorrow": time.mktime(
            (local.tm_year, local.tm_mon, local.tm_mday + 1, 0, 0, 0, 0, 0, -1)
        ),
    }
    if value in named:
        return int(named[value] * 1_000_000)
    if value.startswith("@"):
        try:
            return int(float(value[1:]) * 1_000_000)
        except ValueError:
            raise UsageError(f"{text!r} is not a time: @ takes seconds since the epoch") from None
    if value.startswith(("-", "+")) or value.endswith(" ago") or value.endswith(" left"):
        sign = -1 if value.startswith("-") or value.endswith(" ago") else 1
        span = value.removesuffix(" ago").removesuffix(" left").lstrip("+-")
        return int(now * 1_000_000) + sign * _timespan(span)
    for fmt in _ABSOLUTE_FORMATS:
        with contextlib.suppress(ValueError):
            return int(time.mktime(time.strptime(value, fmt)) * 1_000_000)
    for fmt in ("%H:%M:%S", "%H:%M"):
        with contextlib.suppress(ValueError):
            clock = time.strptime(value, fmt)
            seconds = clock.tm_hour * 3600 + clock.tm_min * 60 + clock.tm_sec
            return int((midnight + seconds) * 1_000_000) if seconds < day else 0
    raise UsageError(
        f"{text!r} is not a time: use '2026-01-02 10:00:00', 'today', 'yesterday' or '-1h'"
    )


def _lines(text: str) -> int | None:
    if text == "all":
        return None
    with contextlib.suppress(ValueError):
        if int(text) >= 0:
            return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: -n takes a number or 'all'")


def configure(parser: argparse.ArgumentParser) -> None:
    # `-S -1h` must read "-1h" as the value, not as an option: widen argparse's notion
    # of a negative number (no option of ours looks like one).
    parser._negative_number_matcher = re.compile(r"^-\d+(\.\d+)?[a-zA-Zµ]*$")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CLUSTERD_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the machine's data directory ($CLUSTERD_DATA_DIR, else /var/lib/clusterd)",
    )
    parser.add_argument(
        "-u", "--unit", action="append", default=[], help="show entries of UNIT (repeatable, globs)"
    )
    parser.add_argument(
        "-t",
        "--identifier",
        action="append",
        default=[],
        help="show entries with this SYSLOG_IDENTIFIER (repeatable)",
    )
    parser.add_argument(
        "matches", nargs="*", metavar="FIELD=VALUE", help="show entries whose FIELD is VALUE"
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="print new entries as they come"
    )
    parser.add_argument(
        "-n",
        "--lines",
        nargs="?",
        const=10,
        type=_lines,
        default=argparse.SUPPRESS,
        help="show the newest N entries (10 without N; 'all' for every one)",
    )
    parser.add_argument("-p", "--priority", help="PRIO or FROM..TO, by name (err) or number (3)")
    parser.add_argument("-S", "--since", help="entries on or after this time")
    parser.add_argument("-U", "--until", help="entries on or before this time")
    parser.add_argument("-g", "--grep", help="MESSAGE matches this regular expression")
    parser.add_argument(
        "--case-sensitive",
        nargs="?",
        const="yes",
        choices=["yes", "no", "true", "false", "1", "0"],
        help="for --grep; by default only patterns with capitals are case-sensitive",
    )
    parser.add_argument("-r", "--reverse", action="store_true", help="newest entries first")
    parser.add_argument(
        "-b",
        "--boot",
        nargs="?",
        const="0",
        help="entries of one boot: 0 (or nothing) the newest, -1 the one before, 1 the "
        "first; or a boot ID, optionally with ±N",
    )
    parser.add_argument(
        "--list-boots", action="store_true", help="list the boots in the journal and end"
    )
    parser.add_argument("--after-cursor", help="entries after this cursor")
    parser.add_argument("--cursor", help="entries from this cursor on")
    parser.add_argument(
        "--show-cursor", action="store_true", help="print the last entry's cursor at the end"
    )
    parser.add_argument(
        "-o",
        "--output",
        default="short",
        choices=FORMATS,
        help="output format (short); verbose: every field of each entry; export: journald's "
        "binary-safe export format, for systemd-journal-remote",
    )
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="show fields in full: long JSON values, unprintable messages, colours",
    )
    parser.add_argument("--utc", action="store_true", help="show times in UTC")
    parser.add_argument("-q", "--quiet", action="store_true", help="no '-- No entries --' notice")
    parser.add_argument(
        "--no-pager", action="store_true", help="accepted for journalctl's sake: never pages"
    )


_BOOT = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F-]{36})?([+-]?\d+)?$")


def resolve_boot(journal: Journal, text: str) -> str:
    """The boot ID ``-b TEXT`` means: ``0``/``-N`` from the newest boot, ``N`` from the
    first, ``ID`` or ``ID±N`` from that boot."""
    match = _BOOT.match(text.strip())
    if not match or not any(match.groups()):
        raise UsageError(f"{text!r} is not a boot: use a boot ID, an offset, or both")
    boot_id, offset_text = match.groups()
    offset = int(offset_text) if offset_text else 0
    boots = [boot for boot, _first, _last in journal.boots()]
    if boot_id is not None:
        boot_id = boot_id.replace("-", "").lower()
        if boot_id not in boots:
            raise UsageError(f"no boot {boot_id} in the journal")
        position = boots.index(boot_id) + offset
    elif offset > 0:
        position = offset - 1
    else:
        position = len(boots) - 1 + offset
    if not 0 <= position < len(boots):
        raise UsageError(f"no boot {text} in the journal ({len(boots)} boots)")
    return boots[position]


def list_boots(journal: Journal, out: Output) -> None:
    """journalctl --list-boots: index (0 the newest), boot ID, first and last entry."""
    boots = journal.boots()

    def stamp(realtime: int) -> str:
        local = time.localtime(realtime // 1_000_000)
        return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", local)

    rows = [
        (str(i - len(boots) + 1), boot, stamp(first), stamp(last))
        for i, (boot, first, last) in enumerate(boots)
    ]
    width = max([3] + [len(row[0]) for row in rows])
    first_width = max([len("FIRST ENTRY")] + [len(row[2]) for row in rows])
    lines = [f"{'IDX':>{width}} {'BOOT ID':32} {'FIRST ENTRY':{first_width}} LAST ENTRY"]
    lines += [f"{i:>{width}} {boot} {first:{first_width}} {last}" for i, boot, first, last in rows]
    out.write(("\n".join(lines) + "\n").encode())


def build_query(args: argparse.Namespace, boot: str | None = None) -> Query:
    grep = None
    if args.grep is not None:
        sensitive = args.case_sensitive
        if sensitive is None:
            case = any(ch.isupper() for ch in args.grep)
        else:
            case = sensitive in ("yes", "true", "1")
        try:
            grep = re.compile(args.grep, 0 if case else re.IGNORECASE)
        except re.error as error:
            raise UsageError(f"bad --grep pattern {args.grep!r}: {error}") from None
    after = None
    if args.after_cursor or args.cursor:
        try:
            journal_id, seqnum, realtime = parse_cursor(args.after_cursor or args.cursor)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if args.cursor and seqnum is not None:
            seqnum -= 1
        elif args.cursor and realtime is not None:
            realtime -= 1
        after = (journal_id, seqnum, realtime)
    fields: dict[str, list[bytes]] = {}
    for match in args.matches:
        name, sep, value = match.partition("=")
        if not sep or not name or not name.replace("_", "").isalnum() or not name.isupper():
            raise UsageError(f"{match!r} is not a FIELD=VALUE match (fields are upper case)")
        fields.setdefault(name, []).append(value.encode())
    for identifier in args.identifier:
        fields.setdefault("SYSLOG_IDENTIFIER", []).append(identifier.encode())
    if boot is not None:
        fields.setdefault("_BOOT_ID", []).append(boot.encode())
    return Query(
        units=list(args.unit),
        fields=fields,
        priorities=parse_priorities(args.priority) if args.priority else None,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        grep=grep,
        after=after,
    )


class _Stop(Exception):
    """SIGTERM or SIGINT while following: end quietly, as journalctl does."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


class Output:
    """stdout as journalctl uses it: big writes, and a closed reader ends the run quietly."""

    def __init__(self) -> None:
        self.stream = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        if data:
            self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def _chunks(records: list[Record], size: int = 8192) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _backlog(
    journal: Journal, query: Query, lines: int | None, reverse: bool, up_to: int | None
) -> Iterator[list[Record]]:
    """What is printed before following (or alone), in print order, in batches."""
    if lines is None and not reverse:
        # Segment by segment, so `-n all` over a big journal never holds all of it.
        for batch in journal.forward(query):
            if up_to is not None:
                batch = [record for record in batch if record[0] <= up_to]
            yield from _chunks(batch)
        return
    if lines is None:
        records = [record for batch in journal.forward(query) for record in batch]
    else:
        records = journal.newest(lines, query, up_to=up_to)
    if reverse:
        records.reverse()
    yield from _chunks(records)


def show(args: argparse.Namespace, out: Output) -> int:
    if args.follow and args.reverse:
        raise UsageError("--follow and --reverse cannot be combined")
    if args.utc:
        os.environ["TZ"] = "UTC"
        time.tzset()
    journal = Journal(args.data_dir)
    if args.list_boots:
        list_boots(journal, out)
        out.flush()
        return 0
    boot = resolve_boot(journal, args.boot) if args.boot is not None else None
    query = build_query(args, boot)
    formatter = Formatter(args.output, journal.journal_id, show_all=args.all)
    # As journalctl: -f alone starts with the last 10; from a cursor or a time it starts
    # there, which is how a follower that lost its connection resumes without a gap.
    starts_somewhere = args.after_cursor or args.cursor or args.since
    lines = getattr(args, "lines", 10 if args.follow and not starts_somewhere else None)
    shown: Record | None = None

    # A follower takes the end first and shows the backlog up to it, so that nothing
    # written meanwhile is lost or printed twice. An empty journal has no backlog: the
    # follower then shows everything from the first entry on.
    position = journal.end() if args.follow else None
    if not args.follow or position is not None:
        up_to = position.last_seqnum if position is not None else None
        for chunk in _backlog(journal, query, lines, args.reverse, up_to):
            if chunk:
                out.write(formatter.many(chunk))
                shown = chunk[-1]

    if not args.follow:
        if shown is None and not args.quiet:
            print("-- No entries --", file=sys.stderr)
        if args.show_cursor and shown is not None:
            out.write(f"-- cursor: {cursor(journal.journal_id, shown)}\n".encode())
        out.flush()
        return 0
    out.flush()
    return follow(journal, query, formatter, position, out)


def follow(
    journal: Journal, query: Query, formatter: Formatter, position: Position | None, out: Output
) -> int:
    # The follower only reads: it never makes the journal's directory, it waits for it.
    watch = DirectoryWatch(journal.directory)
    poller = select.poll()
    if watch.uses_inotify:
        poller.register(watch.fd, select.POLLIN)
    # No events asked for: poll still reports POLLERR/POLLHUP when the reader goes away.
    poller.register(out.stream.fileno(), 0)
    if position is not None and not watch.present:
        watch.gone = True  # removed between reading the backlog and watching

    def emit(records: list[Record]) -> None:
        if records:
            if not formatter.journal_id:
                formatter.journal_id = journal.reload_id()
            for chunk in _chunks(records):
                out.write(formatter.many(chunk))
            out.flush()

    try:
        while True:
            if watch.gone:
                # What was written before the directory went is still in the open segment.
                if position is not None:
                    emit(journal.read_rest(position, query))
                    position.close()
                    position = None
                print(
                    f"clusterd journal: journal directory {journal.directory} was removed; "
                    "waiting for it to come back",
                    file=sys.stderr,
                    flush=True,
                )
                if not _await_directory(watch, poller):
                    return 0
                # A new journal: its own ID, and everything in it is news.
                formatter.journal_id = journal.reload_id()
                print(
                    f"clusterd journal: journal directory {journal.directory} is back; "
                    "following it from its start",
                    file=sys.stderr,
                    flush=True,
                )
            elif not watch.present and not _await_directory(watch, poller):
                return 0
            records, position = journal.read_after(position, query)
            emit(records)
            hangups = watch.wait(poller, None)
            if _hung_up(hangups):
                return 0
    finally:
        if position is not None:
            position.close()
        watch.close()


RETURN_INTERVAL = 0.5
"""How often a follower looks for its journal's directory while there is none."""


def _hung_up(events: list[tuple[int, int]]) -> bool:
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _await_directory(watch: DirectoryWatch, poller: select.poll) -> bool:
    """Wait until the journal's directory exists and is watched; False if stdout closed."""
    while not watch.arm():
        events = poller.poll(RETURN_INTERVAL * 1000)
        if watch.uses_inotify and any(fd == watch.fd for fd, _ in events):
            watch.drain()
        if _hung_up([(fd, ev) for fd, ev in events if fd != watch.fd]):
            return False
    return True


def run(args: argparse.Namespace) -> int:
    out = Output()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return show(args, out)
    except UsageError as error:
        print(f"clusterd journal: {error}", file=sys.stderr)
        return 1
    except (_Stop, BrokenPipeError):
        # Whoever reads us is gone or asked us to stop: drop what cannot be written.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
