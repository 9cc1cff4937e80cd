"""Pilot tests of the journal pane: follow, pause, priority, grep, time format, wrap, save."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from clustertui.backend.fleet.registry import Machine
from clustertui.console.journal_stream import MachineAccess, parse_entry
from clustertui.console.screens.journal import JournalPane, Target
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.widgets.journal_view import JournalEntry, JournalView
from tests.panes.conftest import SIZE, shown, wait_for

START = 1_795_000_000_000_000


def lines(count: int, first: int = 0, priority: int = 6) -> list[JournalEntry]:
    return [
        JournalEntry(START + n * 1000, priority, "8a3d1b2c…", "web.service", f"request {n}")
        for n in range(first, first + count)
    ]


class JournalApp(App[None]):
    def __init__(self, limit: int = 1000) -> None:
        super().__init__()
        self.limit = limit

    def compose(self) -> ComposeResult:
        yield JournalPane(MachineAccess(), limit=self.limit)

    @property
    def pane(self) -> JournalPane:
        return self.query_one(JournalPane)


async def feed(pilot, app: JournalApp, batch: list[JournalEntry]) -> None:
    app.pane.title = "web.service on 8a3d1b2c…"
    total = app.pane.view.total + len(batch)
    app.pane.receive(batch)
    await wait_for(pilot, lambda: app.pane.view.total == total)


def status(app: JournalApp) -> str:
    return str(app.pane.query_one(".pane-status").render())


async def test_scrolling_up_pauses_following_counts_new_lines_and_end_resumes() -> None:
    app = JournalApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.pane.view
        view.focus()
        await feed(pilot, app, lines(200))
        assert view.following and view.scroll_y == view.max_scroll_y
        await pilot.press("pageup")
        assert not view.following
        await feed(pilot, app, lines(7, 200))
        assert view.new_lines == 7
        assert "+7 new lines" in status(app)
        await pilot.press("end")
        assert view.following and view.scroll_y == view.max_scroll_y
        assert "following" in status(app)
        await pilot.press("f")
        assert not view.following and "paused" in status(app)
        await pilot.press("f")
        assert view.following


async def test_the_buffer_keeps_only_the_newest_lines() -> None:
    app = JournalApp(limit=100)
    async with app.run_test(size=SIZE) as pilot:
        await feed(pilot, app, lines(250))
        view = app.pane.view
        assert len(view.entries) == 100
        assert view.buffered[0].message == "request 150"
        assert view.buffered[-1].message == "request 249"


async def test_p_filters_by_priority_and_slash_greps_with_highlights() -> None:
    app = JournalApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.pane.view
        view.focus()
        await feed(pilot, app, lines(5) + lines(2, 100, priority=3) + lines(1, 200, priority=4))
        await pilot.press("p", "p", "p", "p")
        assert view.max_priority == 3
        assert [e.message for e in view.shown] == ["request 100", "request 101"]
        assert "priority ≤ err" in status(app)
        await pilot.press("p")
        assert view.max_priority is None and len(view.shown) == 8
        await pilot.press("slash", *"QUEST 10", "enter")
        assert [e.message for e in view.shown] == ["request 100", "request 101"]
        strip = view.render_line(0)
        highlighted = [
            s.text
            for s in strip
            if s.style and s.style.bgcolor and s.style.bgcolor.name == "yellow"
        ]
        assert highlighted == ["quest 10"]
        app.pane.query_one("FilterBar").value = "!~^request [12]"
        await pilot.pause()
        assert [e.message for e in view.shown] == ["request 0", "request 3", "request 4"]


async def test_t_changes_the_timestamp_format_and_w_wraps_long_lines() -> None:
    app = JournalApp()
    async with app.run_test(size=(80, 20)) as pilot:
        view = app.pane.view
        view.focus()
        long = JournalEntry(START, 6, "m1", "u.service", "x" * 300)
        await feed(pilot, app, [long])
        first = "".join(s.text for s in view.render_line(0))
        await pilot.press("t")
        assert view.time_mode == "iso"
        iso = "".join(s.text for s in view.render_line(0))
        assert iso != first and "T" in iso.split()[0]
        await pilot.press("t")
        assert "." in "".join(s.text for s in view.render_line(0)).split()[2]
        assert view.virtual_size.height == 1
        await pilot.press("w")
        assert view.wrap and view.virtual_size.height > 1
        assert "wrap" in status(app)


async def test_S_saves_the_shown_lines_to_a_file(tmp_path: Path) -> None:
    app = JournalApp()
    target = tmp_path / "saved.log"
    async with app.run_test(size=SIZE) as pilot:
        app.pane.view.focus()
        await feed(pilot, app, lines(3))
        await pilot.press("S")
        await wait_for(pilot, lambda: shown(app, PathPromptScreen, "#prompt-input"))
        app.screen.query_one("#prompt-input").value = str(target)
        await pilot.press("enter")
        await wait_for(pilot, target.exists)
    saved = target.read_text().splitlines()
    assert len(saved) == 3 and saved[2].endswith("8a3d1b2c… web.service: request 2")


def test_journal_text_is_data_never_markup_or_escapes() -> None:
    raw = b'{"__CURSOR":"s=a;i=1;t=1","__REALTIME_TIMESTAMP":"1","PRIORITY":"6",'
    raw += b'"_SYSTEMD_UNIT":"x.service","MESSAGE":"[bold]hi\\u001b[31m"}'
    entry = parse_entry(raw, "m")
    view = JournalView()
    text = "".join(s.text for s in view._segments(entry, entry.message))
    assert "[bold]hi" in text and "\x1b" not in text


async def test_S_offers_a_file_in_the_home_directory_and_says_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: not the current directory, no `…` in the name, the notification absolute."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    app = JournalApp()
    said: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kw: said.append(message)  # type: ignore[method-assign]
        app.pane.view.focus()
        await feed(pilot, app, lines(3))
        await pilot.press("S")
        await wait_for(pilot, lambda: shown(app, PathPromptScreen, "#prompt-input"))
        offered = app.screen.query_one("#prompt-input").value
        assert offered.startswith("~/journal-web.service-on-8a3d1b2c-") and "…" not in offered
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(said))
    saved = list((tmp_path / "home").glob("journal-*.log"))
    assert len(saved) == 1 and not list(tmp_path.glob("journal-*"))
    assert said == [f"saved 3 lines to {saved[0]}"]


async def test_a_journal_never_reached_is_not_announced_lost_at_every_retry() -> None:
    """Issue 13: a machine the tunnel never reached stays on the status line; a journal that
    was read and dropped is said once, and its return too."""
    app = JournalApp()
    said: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kw: said.append(message)  # type: ignore[method-assign]
        pane = app.pane
        machine = Machine("a" * 32, "127.0.0.9", {}, "elsewhere")
        pane.follow([Target(machine, [], "aaaaaaaa…")], "machine aaaaaaaa…")
        follower = pane.followers[0]
        pane.workers.cancel_group(pane, "journal-readers")
        for _ in range(5):
            follower._set_state("reconnecting", "connection refused")
        await pilot.pause()
        assert said == []
        assert "aaaaaaaa…: connection lost, reconnecting" in str(
            pane.query_one(".pane-status").render()
        )
        follower._set_state("following")
        for _ in range(5):
            follower._set_state("reconnecting", "connection reset")
        follower._set_state("following")
        assert said == [
            "journal of aaaaaaaa… lost (connection reset); reconnecting",
            "journal of aaaaaaaa… is back",
        ]


async def test_lines_that_arrive_late_from_one_machine_take_their_place_by_time() -> None:
    """Following several journals, a batch with lines older than the newest shown puts them
    where their time goes (as journalctl interleaves journals), not at the bottom; the
    filters and the "+N new lines" count stay right."""

    def row(at: int, machine: str, message: str, priority: int = 6) -> tuple:
        return (START + at, priority, machine, "u.service", message, "")

    app = JournalApp()
    async with app.run_test(size=SIZE):
        view = app.pane.view
        view.append([row(1, "a", "a1"), row(3, "a", "a3"), row(5, "a", "a5")], merge=True)
        view.append([row(2, "b", "b2"), row(4, "b", "b4", 3), row(6, "b", "b6")], merge=True)
        assert [e.message for e in view.shown] == ["a1", "b2", "a3", "b4", "a5", "b6"]
        assert view.total == 6
        view.set_filters(max_priority=4, grep=None)
        assert [e.message for e in view.shown] == ["b4"]
        view.toggle_follow()  # paused: late lines count as new
        view.append([row(3, "c", "c3", 2), row(7, "c", "c7")], merge=True)
        assert [e.message for e in view.shown] == ["c3", "b4"]
        assert view.new_lines == 1 and view.total == 8
        view.set_filters(max_priority=None, grep=None)
        assert [e.message for e in view.shown] == ["a1", "b2", "a3", "c3", "b4", "a5", "b6", "c7"]
        # One journal followed: lines keep their arrival order.
        view.append([row(0, "a", "a0")])
        assert view.shown[-1].message == "a0"
