"""Provides the journal view: a bounded buffer of journal lines, drawn line by line, following."""

from __future__ import annotations

import heapq
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import ClassVar, NamedTuple, cast

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from clustertui.widgets.literal import cell, clean

DEFAULT_LIMIT = 100_000
TIME_FORMATS = {
    "short": "%b %d %H:%M:%S",
    "iso": "%Y-%m-%dT%H:%M:%S%z",
    "precise": "%b %d %H:%M:%S.{us}",
}
PRIORITY_STYLES = {
    0: "bold red reverse",
    1: "bold red reverse",
    2: "bold red",
    3: "red",
    4: "yellow",
    5: "bold",
    6: "",
    7: "dim",
}
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
HIGHLIGHT = Style(bgcolor="yellow", color="black", bold=True)


class JournalEntry(NamedTuple):
    """One journal line as the view shows it."""

    realtime: int
    """Microseconds since the epoch."""
    priority: int
    machine: str
    unit: str
    message: str
    cursor: str = ""


Row = tuple[int, int, str, str, str, str]
"""A :class:`JournalEntry` as a plain tuple, as the view keeps its lines."""

as_row = cast("Callable[[Row], Row]", tuple)
"""``tuple``, typed: a JournalEntry copied to a plain tuple of the same items. Plain tuples,
because thousands of tracked named tuples kept across collections set off full collections."""


@lru_cache(maxsize=64)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


@lru_cache(maxsize=4096)
def _stamp(seconds: int, fmt: str) -> str:
    return time.strftime(fmt, time.localtime(seconds))


def format_time(realtime: int, mode: str) -> str:
    fmt = TIME_FORMATS[mode]
    seconds, micros = divmod(realtime, 1_000_000)
    stamp = _stamp(seconds, fmt)
    return stamp.replace("{us}", f"{micros:06d}") if mode == "precise" else stamp


class JournalView(ScrollView, can_focus=True):
    """Shows the newest ``limit`` lines; appends in batches; scrolling up stops following."""

    DEFAULT_CSS = """
    JournalView {
        height: 1fr;
        background: $surface;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "scroll_by(-1)", "Up", show=False, id="journal.up"),
        Binding("down", "scroll_by(1)", "Down", show=False, id="journal.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="journal.pageup"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="journal.pagedown"),
        Binding("home", "top", "Top", show=False, id="journal.home"),
        Binding("end", "resume", "End: follow", id="journal.end"),
    ]

    @dataclass
    class FollowChanged(Message):
        """Following started or stopped (a scroll up stops it; End resumes it)."""

        view: JournalView
        following: bool

        @property
        def control(self) -> JournalView:
            return self.view

    def __init__(self, *, limit: int = DEFAULT_LIMIT, id: str | None = None) -> None:
        super().__init__(id=id)
        self.limit = max(1, limit)
        """How many lines the buffer keeps; older ones are dropped."""
        self.entries: list[Row] = []
        """Plain tuples of the buffered lines: the collector stops tracking tuples of strings
        and ints (not subclasses), so a full buffer costs no collector pauses while following."""
        self.base = 0
        """The arrival number of ``entries[0]``: the lines before it were dropped."""
        self.filtered: list[int] | None = None
        """Arrival numbers of the lines that pass the priority and grep filters; None: all."""
        self.following = True
        self.new_lines = 0
        """Lines that arrived since following paused: the "+N new lines" count."""
        self.total = 0
        """Lines ever appended."""
        self.max_priority: int | None = None
        self.grep: re.Pattern[str] | None = None
        self.grep_invert = False
        self.highlight: re.Pattern[str] | None = None
        self.time_mode = "short"
        self.wrap = False
        self._ends: list[int] = []
        self._moving = False
        self._machine_width = 8
        self._unit_width = 12

    # Data -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """How many lines are shown (after the filters)."""
        return len(self.entries) if self.filtered is None else len(self.filtered)

    def shown_at(self, index: int) -> JournalEntry:
        if self.filtered is None:
            return JournalEntry._make(self.entries[index])
        return JournalEntry._make(self.entries[self.filtered[index] - self.base])

    @property
    def shown(self) -> list[JournalEntry]:
        """The shown lines, in order."""
        return [self.shown_at(index) for index in range(self.count)]

    @property
    def buffered(self) -> list[JournalEntry]:
        """Every buffered line, filtered or not."""
        return [JournalEntry._make(entry) for entry in self.entries]

    def append(self, batch: list[Row], merge: bool = False) -> int:
        """Add a batch (one repaint); returns how many lines of it pass the filters.

        With ``merge`` (several journals followed at once, ``batch`` sorted by time) a line
        older than the newest buffered goes where its time puts it, as journalctl interleaves
        journals, instead of at the bottom: a machine whose lines arrive a moment late does
        not leave them out of order.
        """
        entries = self.entries
        filtered = self.filtered
        new = len(batch)
        rows: list[Row] = batch
        were_passing = 0
        if merge and batch and entries and batch[0][0] < entries[-1][0]:
            # Only the buffered tail newer than the batch's oldest line is merged again (late
            # lines are a moment late, so the tail is short); its filter numbers are redone.
            cut = bisect_right(entries, batch[0][0], key=itemgetter(0))
            rows = list(heapq.merge(entries[cut:], batch, key=itemgetter(0)))
            del entries[cut:]
            if filtered is not None:
                drop = bisect_left(filtered, self.base + cut)
                were_passing = len(filtered) - drop
                del filtered[drop:]
        first_number = self.base + len(entries)
        entries.extend(map(as_row, rows))
        self.total += new
        machine_width = max(map(len, (e[2] for e in batch)), default=0)
        unit_width = max(map(len, (e[3] for e in batch)), default=0)
        self._machine_width = max(self._machine_width, min(machine_width, 24))
        self._unit_width = max(self._unit_width, min(unit_width, 32))
        if filtered is not None:
            passes = self._passes
            passing = [
                first_number + i for i, e in enumerate(map(JournalEntry._make, rows)) if passes(e)
            ]
            filtered.extend(passing)
            added = len(passing) - were_passing
        else:
            added = new
        excess = len(entries) - self.limit
        if excess > 0:
            del entries[:excess]
            self.base += excess
            if filtered is not None:
                del filtered[: bisect_left(filtered, self.base)]
        if not self.following:
            self.new_lines += added
        self._relayout()
        return added

    def clear(self) -> None:
        self.base += len(self.entries)
        self.entries.clear()
        if self.filtered is not None:
            self.filtered.clear()
        self.new_lines = 0
        self._relayout()

    def _passes(self, entry: JournalEntry) -> bool:
        if self.max_priority is not None and entry.priority > self.max_priority:
            return False
        if self.grep is not None:
            found = self.grep.search(entry.message) is not None
            if found == self.grep_invert:
                return False
        return True

    def set_filters(
        self,
        *,
        max_priority: int | None,
        grep: re.Pattern[str] | None,
        invert: bool = False,
    ) -> None:
        self.max_priority = max_priority
        self.grep = grep
        self.grep_invert = invert
        self.highlight = None if invert else grep
        if max_priority is None and grep is None:
            self.filtered = None
        else:
            base = self.base
            passes = self._passes
            self.filtered = [
                base + i for i, e in enumerate(map(JournalEntry._make, self.entries)) if passes(e)
            ]
        self._relayout()

    def set_time_mode(self, mode: str) -> None:
        self.time_mode = mode
        self._relayout()

    def set_wrap(self, wrap: bool) -> None:
        self.wrap = wrap
        self._relayout()

    # Layout -----------------------------------------------------------------------------

    def _prefix_width(self) -> int:
        stamp = len(format_time(0, self.time_mode))
        return stamp + 1 + self._machine_width + 1 + self._unit_width + 1

    def _relayout(self) -> None:
        width = max(1, self.scrollable_content_region.width or self.size.width or 80)
        if self.wrap:
            room = max(10, width - self._prefix_width())
            total = 0
            ends = []
            for index in range(self.count):
                total += max(1, -(-len(self.shown_at(index).message) // room))
                ends.append(total)
            self._ends = ends
            self.virtual_size = Size(width, total)
        else:
            count = self.count
            recent = (self.shown_at(i).message for i in range(max(0, count - 500), count))
            longest = max(map(len, recent), default=0)
            self.virtual_size = Size(self._prefix_width() + longest, count)
        if self.following:
            self._moving = True
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
            self._moving = False
        self.refresh()

    def on_resize(self) -> None:
        self._relayout()

    # Rendering --------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        line = int(self.scroll_y) + y
        if self.wrap:
            index = bisect_right(self._ends, line)
            if index >= self.count:
                return Strip.blank(width, self.rich_style)
            part = line - (self._ends[index - 1] if index else 0)
            return self._wrapped(self.shown_at(index), part, width)
        if line >= self.count:
            return Strip.blank(width, self.rich_style)
        entry = self.shown_at(line)
        segments = self._segments(entry, entry.message)
        scroll_x = int(self.scroll_x)
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _prefix(self, entry: JournalEntry) -> list[Segment]:
        style = _style(PRIORITY_STYLES.get(entry.priority, ""))
        stamp = format_time(entry.realtime, self.time_mode)
        return [
            Segment(stamp + " ", style + Style(color="cyan") if not entry.priority < 5 else style),
            Segment(cell(entry.machine)[: self._machine_width].ljust(self._machine_width + 1),
                    style + Style(color="magenta") if entry.priority >= 5 else style),
            Segment(cell(entry.unit)[: self._unit_width].ljust(self._unit_width + 1),
                    style + Style(color="green") if entry.priority >= 5 else style),
        ]  # fmt: skip

    def _segments(self, entry: JournalEntry, text: str) -> list[Segment]:
        segments = self._prefix(entry)
        message_style = _style(PRIORITY_STYLES.get(entry.priority, ""))
        text = clean(text)
        if self.highlight is None:
            segments.append(Segment(text, message_style))
            return segments
        position = 0
        for match in self.highlight.finditer(text):
            if match.start() == match.end():
                continue
            segments.append(Segment(text[position : match.start()], message_style))
            segments.append(Segment(match.group(), message_style + HIGHLIGHT))
            position = match.end()
        segments.append(Segment(text[position:], message_style))
        return segments

    def _wrapped(self, entry: JournalEntry, part: int, width: int) -> Strip:
        room = max(10, width - self._prefix_width())
        piece = entry.message[part * room : (part + 1) * room]
        if part == 0:
            segments = self._segments(entry, piece)
        else:
            segments = [Segment(" " * self._prefix_width()), Segment(clean(piece))]
        return Strip(segments).crop_extend(0, width, self.rich_style)

    # Following --------------------------------------------------------------------------

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if not self._moving and self.following and new_value < old_value:
            self._set_following(False)

    def _set_following(self, following: bool) -> None:
        if following == self.following:
            return
        self.following = following
        if following:
            self.new_lines = 0
            self._moving = True
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
            self._moving = False
        self.post_message(self.FollowChanged(self, following))

    def toggle_follow(self) -> None:
        self._set_following(not self.following)

    def action_resume(self) -> None:
        self._set_following(True)

    def action_scroll_by(self, delta: int) -> None:
        self.scroll_to(y=self.scroll_y + delta, animate=False)

    def action_page(self, direction: int) -> None:
        self.scroll_to(y=self.scroll_y + direction * max(1, self.size.height - 1), animate=False)

    def action_top(self) -> None:
        self.scroll_to(y=0, animate=False)

    # Saving -----------------------------------------------------------------------------

    def plain_lines(self) -> Iterable[str]:
        """The shown lines as text, the way the view prints them (without colour)."""
        for index in range(self.count):
            entry = self.shown_at(index)
            stamp = format_time(entry.realtime, self.time_mode)
            yield f"{stamp} {entry.machine} {entry.unit}: {entry.message}"

    def save(self, path: Path) -> int:
        """Write the shown lines to ``path``; returns how many."""
        count = 0
        with path.open("w", encoding="utf-8", errors="surrogateescape") as out:
            for line in self.plain_lines():
                out.write(line + "\n")
                count += 1
        return count

    @staticmethod
    def priority_name(priority: int | None) -> str:
        return "all" if priority is None else PRIORITY_NAMES[priority]
