"""Issue 13 in the console: every action answers, errors say why, focus and layout hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual import events
from textual.app import App
from textual.command import CommandPalette
from textual.widgets import Input, TextArea

from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.console.app import ClusterConsole
from clustertui.console.screens.help import HelpScreen
from clustertui.console.screens.history import HistoryScreen
from clustertui.console.screens.new_key import NewKeyScreen
from clustertui.widgets.filter_bar import FilterBar
from clustertui.widgets.watch_log import WatchLog
from tests.console.conftest import (
    SIZE,
    console_for,
    loaded,
    seed,
    seeded_console,
    select,
    tree,
    wait_for,
)
from tests.harness.etcd import EtcdMember
from tests.harness.stores import RunningStore

REFUSED = "nobody answers at http://127.0.0.1:1: connection refused; is the store running there?"


def recorded(app: ClusterConsole) -> list[str]:
    """Every notification the console gives from now on (they expire from the screen)."""
    said: list[str] = []
    notify = app.notify

    def record(message: str, **kwargs: Any) -> None:
        said.append(message)
        notify(message, **kwargs)

    app.notify = record  # type: ignore[method-assign]
    return said


async def test_an_endpoint_nobody_answers_on_is_named_with_its_reason() -> None:
    """#13.2: the console says why it reconnects, in the words clusterctl uses."""
    app = console_for("http://127.0.0.1:1")
    said = recorded(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: REFUSED in said, within=15)
        assert app.cluster_header.state.startswith("reconnecting (attempt")
        # Said once, not at every attempt.
        await wait_for(pilot, lambda: app.attempt >= 2, within=15)
        assert said.count(REFUSED) == 1


async def test_n_keeps_the_directory_and_tab_typed_fast_reaches_the_value(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """#13.3: typing after `n` appends to the prefilled directory; tab moves to the value
    even when typed at once (no pause between the keys)."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        said = recorded(app)
        await select(pilot, ns + b"config/web/")
        await pilot.press("n", *"newbie1", "tab", *"v1")
        dialog = app.screen
        assert isinstance(dialog, NewKeyScreen)
        assert dialog.query_one("#new-key", Input).value == (ns + b"config/web/newbie1").decode()
        assert dialog.query_one("#new-value", TextArea).text == "v1"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, NewKeyScreen))
        await wait_for(pilot, lambda: any("wrote" in note for note in said))
        stored = await kv.get(ns + b"config/web/newbie1")
        assert stored is not None and stored.value == b"v1"


async def test_keys_typed_behind_n_keep_their_order_across_the_dialogs_mount() -> None:
    """Keys held while the dialog mounted and keys handed over right after it mounted go into
    the fields in the order typed (a fast typist's "newbie1<tab>v1" was once split between
    the key and the value when the held keys were typed in only at the next idle)."""
    app = App[None]()
    async with app.run_test(size=SIZE) as pilot:
        dialog = NewKeyScreen("/config/")
        for character in "new":
            dialog.type_ahead(events.Key(character, character))
        await app.push_screen(dialog)
        for character in "bie1":
            dialog.type_ahead(events.Key(character, character))
        dialog.type_ahead(events.Key("tab", None))
        dialog.type_ahead(events.Key("v", "v"))
        await pilot.pause()
        assert dialog.query_one("#new-key", Input).value == "/config/newbie1"
        assert dialog.query_one("#new-value", TextArea).text == "v"


async def test_at_80x24_the_state_help_and_dialogs_stay_in_sight(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """#13.4: the header keeps the connection state, the footer `? Help`, dialogs fit."""
    await seed(kv, ns)
    app = console_for(store.url, ns)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        header = app.cluster_header
        await wait_for(pilot, lambda: header.state == "connected" and header.leader)
        await pilot.pause(0.2)
        line = _row(app, 0)
        assert line.rstrip().endswith("connected"), line
        footer = _row(app, 23)
        assert "? Help" in footer or "?Help" in footer.replace(" ", ""), footer
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()
        box = app.screen.query_one("HelpScreen > Vertical").region
        assert box.right <= 80 and box.x >= 0, box


def _row(app: ClusterConsole, y: int) -> str:
    """The characters on screen row ``y`` as the terminal shows them."""
    return app.screen._compositor.render_strips()[y].text


async def test_ctrl_p_opens_the_palette_in_every_pane_and_ctrl_c_quits(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """#13.5: ctrl+p, as the README and `?` say, opens the palette wherever the focus is."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        assert [row[1] for row in app.help_rows() if row[3] == "app.palette"] == ["^p"]
        for number in "12345":
            await pilot.press(number)
            await pilot.pause(0.1)
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette))
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: app._exit)


async def test_closing_the_watch_log_gives_the_focus_back_to_the_tree(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """#13.6: `w` closing the log while it has the focus leaves the keys working."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await pilot.press("w")
        log = app.keys_pane.query_one(WatchLog)
        await wait_for(pilot, lambda: log.prefix is not None)
        log.focus()
        await pilot.pause()
        await pilot.press("w")
        await wait_for(pilot, lambda: log.prefix is None)
        await pilot.pause()
        assert app.focused is tree(app)
        before = tree(app).cursor_child
        await pilot.press("down")
        await pilot.pause()
        assert tree(app).cursor_child != before


async def test_escape_in_a_filter_gives_the_focus_back_and_a_bad_regex_says_so(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """Focus is never lost: escape closes the filter and the list has the keys again."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        bar = app.keys_pane.query_one(FilterBar)
        await pilot.press("slash", *"~[unclosed")
        await wait_for(pilot, lambda: bar.value == "~[unclosed")
        assert "bad regular expression" in str(bar.border_title)
        await pilot.press("escape")
        await pilot.pause()
        assert app.focused is tree(app)
        for number in "34":
            await pilot.press(number)
            await pilot.pause(0.2)
            table_bar = app.screen.focused
            await pilot.press("slash")
            await pilot.pause(0.1)
            assert isinstance(app.focused, FilterBar)
            await pilot.press("escape")
            await pilot.pause()
            assert app.focused is table_bar and app.focused is not None


@pytest.mark.slow
async def test_a_directory_opened_during_an_outage_fills_when_the_store_returns(
    fresh_etcd: EtcdMember,
) -> None:
    """#13.7: opened during an outage, the directory lists itself once the store answers;
    `r` keeps the cursor, the open directories and the filter."""
    kv = make_client([fresh_etcd.url])
    await kv.wait_ready()
    await seed(kv, b"/r/")
    app = console_for(fresh_etcd.url, b"/r/")
    said = recorded(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await asyncio.to_thread(fresh_etcd.stop)
        await wait_for(pilot, lambda: app.cluster_header.state.startswith("reconnecting"))
        assert tree(app).select_path(b"/r/queue/")
        tree(app).open_directory(b"/r/queue/")
        await wait_for(pilot, lambda: any("cannot list /r/queue/" in note for note in said))
        await asyncio.to_thread(lambda: fresh_etcd.start().wait_ready())
        await wait_for(pilot, lambda: tree(app).shown(b"/r/queue/0002"), 20)
        # r: the open directories are listed again, the cursor stays put.
        tree(app).open_directory(b"/r/config/")
        await wait_for(pilot, lambda: tree(app).shown(b"/r/config/app/"))
        assert tree(app).select_path(b"/r/queue/0001")
        await pilot.press("r")
        await pilot.pause(0.5)
        await wait_for(pilot, lambda: tree(app).shown(b"/r/config/app/"))
        assert tree(app).shown(b"/r/queue/0002")
        assert tree(app).cursor_child.path == b"/r/queue/0001"
    await kv.close()


@pytest.mark.slow
async def test_a_write_refused_during_an_outage_keeps_the_dialog_and_what_was_typed(
    fresh_etcd: EtcdMember,
) -> None:
    kv = make_client([fresh_etcd.url])
    await kv.wait_ready()
    await seed(kv, b"/w/")
    app = console_for(fresh_etcd.url, b"/w/")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, b"/w/config/")
        await asyncio.to_thread(fresh_etcd.stop)
        await pilot.press("n", *"kept", "tab", *"typed value", "ctrl+s")
        dialog = app.screen
        assert isinstance(dialog, NewKeyScreen)
        error = dialog.query_one("#new-error")
        await wait_for(pilot, lambda: "nothing is lost" in str(error.render()), 20)
        assert "cannot write /w/config/kept: nobody answers at" in str(error.render())
        assert dialog.query_one("#new-value", TextArea).text == "typed value"
        await asyncio.to_thread(lambda: fresh_etcd.start().wait_ready())
        await kv.wait_ready()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, NewKeyScreen), 20)
        assert (await kv.get(b"/w/config/kept")).value == b"typed value"
    await kv.close()


async def test_history_says_when_a_revision_changed_only_the_lease(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    await seed(kv, ns)
    lease = await kv.lease(300)
    await kv.put(ns + b"top", b"plain", lease=lease)
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, ns + b"top")
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
        await pilot.pause()
        lines = [str(s.render()) for s in app.screen.query(".history-rev")]
        assert f"lease {lease.id:x}  only the lease changed (was none)" in lines[0]
