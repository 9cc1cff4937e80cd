"""Provides the journal pane: one unit, several, or a whole machine, followed and merged by time."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.widgets import Input, Static

from clustertui.backend.fleet.registry import Machine
from clustertui.console.journal_stream import BACKLOG, JournalFollower, MachineAccess
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.widgets.filter_bar import FilterBar
from clustertui.widgets.journal_view import (
    DEFAULT_LIMIT,
    TIME_FORMATS,
    JournalEntry,
    JournalView,
    Row,
    as_row,
)
from clustertui.widgets.literal import cell, literal, plural

FLUSH_SECONDS = 0.05
PRIORITY_CYCLE: tuple[int | None, ...] = (None, 6, 5, 4, 3)
"""What `p` steps through: everything, then info, notice, warning and err and above."""


@dataclass
class Target:
    """One machine to read, the units wanted there (its whole journal when empty)."""

    machine: Machine
    units: list[str] = field(default_factory=list)
    label: str = ""


def grep_pattern(text: str) -> tuple[re.Pattern[str] | None, bool]:
    """The filter bar's text as a pattern to grep and highlight with, and whether it inverts."""
    invert = text.startswith("!")
    body = text[1:] if invert else text
    if not body:
        return None, False
    if body.startswith("~"):
        return re.compile(body[1:]), invert
    return re.compile(re.escape(body), re.IGNORECASE), invert


class JournalPane(Container):
    """The Journal tab: a followed, filtered, bounded view over one or more journal readers."""

    DEFAULT_CSS = """
    JournalPane {
        height: 1fr;
    }
    JournalPane > .pane-status {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "follow", "Follow", id="journal.follow"),
        Binding("p", "priority", "Priority", id="journal.priority"),
        Binding("slash", "filter", "Grep", id="journal.grep"),
        Binding("t", "time_format", "Time format", id="journal.time"),
        Binding("w", "wrap", "Wrap", id="journal.wrap"),
        Binding("S", "save", "Save", id="journal.save"),
    ]

    def __init__(
        self, access: MachineAccess, *, limit: int = DEFAULT_LIMIT, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.access = access
        self.limit = limit
        self.title = ""
        """What is followed, in words: ``hello.service on 8a3d1b2c…``."""
        self.followers: list[JournalFollower] = []
        self.pending: list[Row] = []
        """Lines read since the last repaint, as plain tuples (see :class:`JournalView`)."""
        self.priority_step = 0
        self.grep_text = ""
        self.whole_cluster = False
        """Whether every machine is followed (what the pane opens on when nothing was chosen)."""
        self._told_lost: set[int] = set()

    def compose(self) -> ComposeResult:
        yield Static("", classes="pane-status")
        yield JournalView(limit=self.limit)
        yield FilterBar()

    @property
    def view(self) -> JournalView:
        return self.query_one(JournalView)

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECONDS, self._flush)
        self.update_status()

    # Following --------------------------------------------------------------------------

    def follow(
        self,
        targets: list[Target],
        title: str,
        backlog: str = BACKLOG,
        *,
        whole_cluster: bool = False,
    ) -> None:
        """Stop whatever is followed (its readers too) and follow ``targets`` instead."""
        self.whole_cluster = whole_cluster
        self._told_lost.clear()
        self.workers.cancel_group(self, "journal-readers")
        self.pending.clear()
        self.view.clear()
        self.title = title
        self.followers = [
            JournalFollower(
                self.access, t.machine, t.units, t.label, backlog=backlog, on_state=self._state
            )
            for t in targets
        ]
        for follower in self.followers:
            self._read(follower)
        self.update_status()

    def stop(self) -> None:
        self.workers.cancel_group(self, "journal-readers")
        self.followers = []

    @work(group="journal-readers")
    async def _read(self, follower: JournalFollower) -> None:
        async with contextlib.aclosing(follower.follow()) as batches:
            async for batch in batches:
                self.receive(batch)

    def receive(self, batch: list[JournalEntry]) -> None:
        """Queue lines for the next repaint.

        Plain tuples, because a queue of tracked objects that lives across collections
        promotes thousands of them per batch and sets off full collections while following.
        """
        self.pending.extend(map(as_row, batch))

    def _state(self, follower: JournalFollower, state: str) -> None:
        # Said once per loss, and a retry only for a journal that was read: a machine never
        # reached keeps its reason on the status line, not in a notification per attempt.
        key = id(follower)
        if state == "following":
            if key in self._told_lost:
                self._told_lost.discard(key)
                self.notify(f"journal of {follower.label} is back", markup=False)
        elif state in ("refused", "reconnecting") and key not in self._told_lost:
            if state == "refused":
                self._told_lost.add(key)
                self.notify(
                    f"journal of {follower.label} refused: {follower.error}",
                    severity="error",
                    markup=False,
                )
            elif follower.ever_followed:
                self._told_lost.add(key)
                self.notify(
                    f"journal of {follower.label} lost ({follower.error}); reconnecting",
                    severity="warning",
                    markup=False,
                )
        self.update_status()

    def _flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        merge = len(self.followers) > 1
        if merge:
            batch.sort(key=itemgetter(0))
        self.view.append(batch, merge=merge)
        self.update_status()

    def update_status(self) -> None:
        view = self.view
        text = Text()
        if not self.title:
            text.append(
                "no machine yet: the whole cluster's journal shows once machines join",
                style="dim italic",
            )
            self.query_one(".pane-status", Static).update(text)
            return
        text.append_text(literal(self.title, "bold"))
        if self.whole_cluster:
            text.append("  (j narrows)", style="dim")
        text.append(f"   {plural(view.count, 'line')}")
        if view.max_priority is not None:
            text.append(f"   priority ≤ {view.priority_name(view.max_priority)}", style="cyan")
        if self.grep_text:
            text.append("   grep ")
            text.append_text(literal(self.grep_text, "cyan"))
        if view.wrap:
            text.append("   wrap")
        for follower in self.followers:
            if follower.state == "reconnecting":
                text.append(
                    cell(f"   {follower.label}: connection lost, reconnecting"), style="bold red"
                )
            elif follower.state == "refused":
                text.append(cell(f"   {follower.label}: {follower.error}"), style="bold red")
        if view.following:
            text.append("   following", style="green")
        else:
            text.append("   paused", style="bold yellow")
            if view.new_lines:
                text.append(f" +{view.new_lines:,} new lines (End resumes)", style="bold yellow")
        # One line of fixed height: no layout pass per batch.
        self.query_one(".pane-status", Static).update(text, layout=False)

    @on(JournalView.FollowChanged)
    def _follow_changed(self) -> None:
        self.update_status()

    # Actions ----------------------------------------------------------------------------

    def action_follow(self) -> None:
        self.view.toggle_follow()
        self.update_status()

    def action_priority(self) -> None:
        self.priority_step = (self.priority_step + 1) % len(PRIORITY_CYCLE)
        self._apply_filters()

    def action_time_format(self) -> None:
        modes = list(TIME_FORMATS)
        self.view.set_time_mode(modes[(modes.index(self.view.time_mode) + 1) % len(modes)])
        self.update_status()

    def action_wrap(self) -> None:
        self.view.set_wrap(not self.view.wrap)
        self.update_status()

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    @on(FilterBar.Applied)
    def _grep(self, event: FilterBar.Applied) -> None:
        self.grep_text = event.bar.value if event.matcher is not None else ""
        self._apply_filters()

    @on(Input.Submitted)
    def _grep_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterBar):
            self.view.focus()

    def _apply_filters(self) -> None:
        pattern, invert = grep_pattern(self.grep_text)
        self.view.set_filters(
            max_priority=PRIORITY_CYCLE[self.priority_step], grep=pattern, invert=invert
        )
        self.update_status()

    def default_save_path(self) -> str:
        """``~/journal-<what is followed>-<time>.log``: in the home directory, not wherever the
        console was started (a checkout), and only letters, digits, dots and dashes in it."""
        what = re.sub(r"[^A-Za-z0-9.@-]+", "-", self.title.replace("…", "")).strip("-.")
        name = "-".join(part for part in ("journal", what[:60].rstrip("-.")) if part)
        return f"~/{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"

    def action_save(self) -> None:
        default = self.default_save_path()

        def check(answer: str) -> Text | None:
            path = Path(answer).expanduser()
            if path.is_dir():
                return Text(f"{answer} is a directory; name a file")
            if not path.parent.is_dir():
                return Text(f"{path.parent} does not exist")
            return None

        def chosen(answer: str | None) -> None:
            if not answer:
                return
            path = Path(answer).expanduser().resolve()
            try:
                count = self.view.save(path)
            except OSError as error:
                self.notify(
                    f"cannot save to {path}: {error.strerror}", severity="error", markup=False
                )
                return
            self.notify(f"saved {plural(count, 'line')} to {path}", markup=False)

        self.app.push_screen(
            PathPromptScreen("Save the journal", "the lines shown, as text", check, default),
            chosen,
        )
