"""Pilot tests of the key pane against every store: tree, value view, actions, live watch."""

from __future__ import annotations

import json

from textual import events
from textual.widgets import Input, TextArea

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.keyspace import MAX_REQUEST_BYTES
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.edit_value import EditValueScreen
from clustertui.console.screens.help import HelpScreen
from clustertui.console.screens.history import HistoryScreen
from clustertui.console.screens.new_key import NewKeyScreen
from clustertui.console.screens.ttl import TTLScreen
from clustertui.widgets.value_view import ValueView
from clustertui.widgets.watch_log import WatchLog
from tests.console.conftest import (
    SIZE,
    console_for,
    loaded,
    open_screen,
    pane,
    seed,
    seeded_console,
    select,
    tree,
    wait_for,
)
from tests.harness.stores import RunningStore


def names(app, prefix: bytes) -> list[str]:  # type: ignore[no-untyped-def]
    return [child.name for child in tree(app).children_of(prefix)]


async def test_the_tree_lists_directories_with_key_counts(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        children = {child.name: child for child in tree(app).children_of(ns)}
        assert list(children) == ["config/", "queue/", "top"]
        assert children["config/"].count == 3
        assert children["queue/"].count == 3
        assert not children["top"].is_dir
        await select(pilot, ns + b"config/app/db")
        assert names(app, ns + b"config/") == ["app/", "web/"]


async def test_selecting_a_json_key_shows_it_pretty_with_its_revisions(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    await seed(kv, ns)
    current = await kv.get(ns + b"config/app/db")
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, ns + b"config/app/db")
        view = app.query_one(ValueView)
        await wait_for(pilot, lambda: view.entry is not None)
        assert view.kind == "json"
        assert view.entry.mod_revision == current.mod_revision
        assert '"port": 5432' in view.text


async def test_new_key_action_creates_the_key_under_a_lease(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"top")
        await open_screen(pilot, "n", NewKeyScreen)
        app.screen.query_one("#new-key", Input).value = (ns + b"fresh").decode()
        app.screen.query_one("#new-value", TextArea).text = "brand new"
        app.screen.query_one("#new-ttl", Input).value = "5m"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: tree(app).shown(ns + b"fresh"))
        stored = await kv.get(ns + b"fresh")
        assert stored.value == b"brand new"
        assert stored.lease != 0
        ttl = await kv.get_lease_info(stored.lease)
        assert 0 < ttl.TTL <= 300


async def test_edit_action_saves_the_new_value(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"config/app/level")
        await wait_for(pilot, lambda: app.query_one(ValueView).entry is not None)
        await open_screen(pilot, "e", EditValueScreen)
        assert app.screen.query_one(TextArea).text == "info"
        app.screen.query_one(TextArea).text = "debug"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, EditValueScreen))
        for _ in range(100):
            if (await kv.get(ns + b"config/app/level")).value == b"debug":
                break
            await pilot.pause(0.05)
        assert (await kv.get(ns + b"config/app/level")).value == b"debug"
        await wait_for(pilot, lambda: app.query_one(ValueView).entry.value == b"debug")


async def test_edit_refuses_a_value_over_the_request_limit(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"top")
        await wait_for(pilot, lambda: app.query_one(ValueView).entry is not None)
        await open_screen(pilot, "e", EditValueScreen)
        line = "x" * 999 + "\n"
        app.screen.query_one(TextArea).text = line * (MAX_REQUEST_BYTES // len(line) + 1)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, EditValueScreen)
        assert "refused" in str(app.screen.query_one("#edit-error").render())
        await pilot.press("escape")
    assert (await kv.get(ns + b"top")).value == b"plain"


async def test_deleting_a_directory_asks_with_the_count_then_deletes_the_prefix(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"config/")
        await open_screen(pilot, "d", ConfirmScreen)
        assert "3 keys" in app.screen.question.plain
        await pilot.press("y")
        await wait_for(pilot, lambda: not tree(app).shown(ns + b"config/"))
    remaining = [kv_.key for kv_ in await kv.get_prefix(ns + b"config/")]
    assert remaining == []
    assert (await kv.get(ns + b"top")).value == b"plain"


async def test_cancelled_delete_and_ctrl_d_keep_the_key(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"top")
        await pilot.press("ctrl+d", "ctrl+k")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await open_screen(pilot, "d", ConfirmScreen)
        await pilot.press("enter")  # the focused button is Cancel
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
    assert (await kv.get(ns + b"top")).value == b"plain"


async def test_ttl_on_a_directory_puts_every_key_under_one_lease_and_clears_it(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (_app, pilot):
        await select(pilot, ns + b"queue/")
        await open_screen(pilot, "t", TTLScreen)
        await pilot.press(*"120", "enter")
        leases: set[int] = set()
        for _ in range(100):
            leases = {kv_.lease for kv_ in await kv.get_prefix(ns + b"queue/")}
            if 0 not in leases:
                break
            await pilot.pause(0.05)
        assert len(leases) == 1 and 0 not in leases
        await open_screen(pilot, "t", TTLScreen)
        await pilot.press("enter")
        for _ in range(100):
            leases = {kv_.lease for kv_ in await kv.get_prefix(ns + b"queue/")}
            if leases == {0}:
                break
            await pilot.pause(0.05)
        assert leases == {0}
        assert [kv_.value for kv_ in await kv.get_prefix(ns + b"queue/")] == [b"job"] * 3


async def test_history_lists_earlier_values_newest_first(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    await seed(kv, ns)
    for value in (b"one", b"two", b"three"):
        await kv.put(ns + b"top", value)
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, ns + b"top")
        await open_screen(pilot, "h", HistoryScreen)
        assert [entry.value for entry in app.screen.entries] == [b"three", b"two", b"one", b"plain"]
        await pilot.press("escape")


async def test_watch_log_lists_events_under_the_selected_prefix(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"queue/")
        await pilot.press("w")
        log = app.query_one(WatchLog)
        assert log.prefix == ns + b"queue/"
        await kv.put(ns + b"queue/0009", b"late job")
        await kv.put(ns + b"top", b"not under the prefix")
        await kv.delete(ns + b"queue/0000")
        await wait_for(pilot, lambda: len(log.lines) >= 2)
        text = "\n".join(line.text for line in log.lines)
        assert "PUT" in text and "queue/0009 = late job" in text
        assert "DELETE" in text and "queue/0000" in text
        assert "not under the prefix" not in text


async def test_copy_puts_the_key_path_on_the_clipboard(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"config/app/db")
        await pilot.press("y")
        assert app.clipboard == (ns + b"config/app/db").decode()


async def test_reload_picks_up_the_store_as_it_is(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        pane(app).loaded.clear()
        await pilot.press("r")
        await loaded(pilot)
        assert names(app, ns) == ["config/", "queue/", "top"]


async def test_filter_matches_substrings_regexes_and_inverts(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    await seed(kv, ns)
    await kv.put(ns + b"topping", b"x")
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        key_tree = tree(app)
        # The filter searches the store and shows only matching paths (issue 13).
        await pilot.press("slash", *"PING")
        await wait_for(pilot, lambda: not key_tree.shown(ns + b"top"))
        assert key_tree.shown(ns + b"topping") and not key_tree.shown(ns + b"config/")
        app.query_one("#key-filter", Input).value = "~^top$"
        await wait_for(pilot, lambda: not key_tree.shown(ns + b"topping"))
        assert key_tree.shown(ns + b"top")
        app.query_one("#key-filter", Input).value = "!ping"
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/"))
        assert key_tree.shown(ns + b"top") and not key_tree.shown(ns + b"topping")
        await pilot.press("escape")
        await pilot.pause()
        assert key_tree.shown(ns + b"top") and key_tree.shown(ns + b"topping")


async def test_the_filter_finds_keys_in_directories_never_opened(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        key_tree = tree(app)
        assert not key_tree.shown(ns + b"config/web/motd")
        await pilot.press("slash", *"motd")
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/web/motd"))
        assert key_tree.shown(ns + b"config/web/") and not key_tree.shown(ns + b"config/app/")
        assert not key_tree.shown(ns + b"queue/") and not key_tree.shown(ns + b"top")
        bar = app.keys_pane.query_one("#key-filter")
        assert str(bar.border_title).startswith("1 key of ")


async def test_a_filter_shown_keeps_up_with_keys_written_after_its_search(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """The filter's search reads one revision; keys written after it that match appear (in
    an open directory and at the top), and keys that do not match stay hidden."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        key_tree = tree(app)
        await pilot.press("slash", *"motd")
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/web/motd"))
        await kv.put(ns + b"config/web/other", b"x")
        await kv.put(ns + b"config/web/motd2", b"new")
        await kv.put(ns + b"late-motd", b"y")
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/web/motd2"))
        await wait_for(pilot, lambda: key_tree.shown(ns + b"late-motd"))
        assert not key_tree.shown(ns + b"config/web/other")
        assert not key_tree.shown(ns + b"top")
        await pilot.press("escape")
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/web/other"))


async def test_watch_events_while_navigating_add_update_and_remove_keys(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"config/app/level")
        view = app.query_one(ValueView)
        await wait_for(pilot, lambda: view.entry is not None)
        await pilot.press("up", "down")
        await kv.put(ns + b"config/app/new", b"arrived")
        await kv.put(ns + b"config/app/level", json.dumps({"level": "warn"}).encode())
        await kv.delete(ns + b"top")
        await kv.put(ns + b"newdir/leaf", b"x")
        key_tree = tree(app)
        await wait_for(pilot, lambda: key_tree.shown(ns + b"config/app/new"))
        await wait_for(pilot, lambda: not key_tree.shown(ns + b"top"))
        await wait_for(pilot, lambda: view.entry is not None and view.kind == "json")
        assert names(app, ns + b"config/app/") == ["db", "level", "new"]
        assert names(app, ns) == ["config/", "newdir/", "queue/"]
        counts = {child.name: child.count for child in key_tree.children_of(ns)}
        assert counts == {"config/": 4, "newdir/": 1, "queue/": 3}
        assert key_tree.cursor_child is not None
        assert key_tree.cursor_child.path == ns + b"config/app/level"


async def test_read_only_removes_every_write_action(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns, read_only=True) as (app, pilot):
        await select(pilot, ns + b"top")
        for key in ("n", "e", "d", "t"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is app.screen_stack[0], key
        shown = {
            binding.action for _, binding, enabled, _ in app.active_bindings.values() if enabled
        }
        assert not shown & {"new", "edit", "delete", "ttl"}
        await open_screen(pilot, "question_mark", HelpScreen)
        ids = {row[3] for row in app.screen.rows}
        assert "keys.delete" not in ids and "keys.history" in ids
    assert (await kv.get(ns + b"top")).value == b"plain"


async def test_markup_and_escape_sequences_in_keys_and_values_stay_literal(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    nasty_key = ns + b"[bold red]boom \x1b[31mred"
    await kv.put(nasty_key, b"[link=http://x]click[/link] \x1b]0;title\x07 \x1b[2J")
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, nasty_key)
        view = app.query_one(ValueView)
        await wait_for(pilot, lambda: view.entry is not None)
        label = tree(app).label_of(nasty_key)
        assert "[bold red]boom" in label
        assert "\x1b" not in label and "\\x1b[31mred" in label
        assert "[link=http://x]click[/link]" in view.text
        assert "\x1b" not in view.text and "\x07" not in view.text
        screen_text = "".join(
            segment.text for strip in app.screen._compositor.render_strips() for segment in strip
        )
        assert "[bold red]boom" in screen_text and "[link=http://x]click[/link]" in screen_text
        assert "\x1b" not in screen_text


async def test_help_lists_every_binding_and_the_keymap_remaps_by_id(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns, keymap={"keys.delete": "x"}) as (app, pilot):
        await select(pilot, ns + b"top")
        await open_screen(pilot, "question_mark", HelpScreen)
        rows = {row[3]: row for row in app.screen.rows}
        for binding_id in (
            "app.quit",
            "app.help",
            "keys.new",
            "keys.edit",
            "keys.ttl",
            "keys.watch",
            "tree.toggle",
            "filter.close",
            "confirm.yes",
            "edit.save",
            "history.close",
        ):
            assert binding_id in rows
        assert rows["keys.delete"][1] == "x"
        await pilot.press("escape")
        await open_screen(pilot, "x", ConfirmScreen)


async def test_number_keys_switch_tabs_and_the_palette_has_every_action(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await pilot.press("3")
        await pilot.pause()
        assert app.query_one("#tabs").active == "units"
        assert app.units_pane.table.has_focus
        await pilot.press("1")
        await pilot.pause()
        assert app.query_one("#tabs").active == "keys"
        titles = {command.title for command in app.get_system_commands(app.screen)}
        here = ns.decode()
        for action in ("New", "Watch log", "Reload"):
            assert f"Keys: {action}" in titles
        for action in ("Delete", "TTL", "Copy path"):
            assert f"Keys: {action} {here}" in titles
        # Edit and History need a key under the cursor, not a directory: not offered.
        assert not [title for title in titles if title.startswith(("Keys: Edit", "Keys: Hist"))]
        # The other panes' actions are offered in their own tab only (issue 13.8).
        assert not [title for title in titles if title.startswith(("Units:", "Machines:"))]
        await pilot.press("5")
        await pilot.pause()
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert "Journal: Follow" in titles
        await pilot.press("1")
        await pilot.pause()
        await pilot.press("colon")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "CommandPalette"


async def test_notifications_about_a_key_show_its_name_literally(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    nasty_key = ns + b"[bold red]boom"
    await kv.put(nasty_key, b"x")
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, nasty_key)
        await pilot.press("y")
        await wait_for(pilot, lambda: len(app._notifications) > 0)
        (notification,) = list(app._notifications)
        assert notification.message == "copied " + nasty_key.decode()
        assert notification.markup is False


async def test_a_leased_key_shows_its_lease_and_a_ttl_that_counts_down(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    lease = await kv.lease(600)
    await kv.put(ns + b"lock", b"held", lease=lease)
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, ns + b"lock")
        view = app.query_one(ValueView)
        await wait_for(pilot, lambda: view.ttl is not None)
        first = view.ttl
        assert 590 <= first <= 600
        assert f"lease {lease.id:x}" in view.meta and f"TTL {first}s" in view.meta
        await wait_for(pilot, lambda: view.ttl < first, 5)
        assert f"TTL {view.ttl}s" in view.meta


async def test_palette_commands_run_the_pane_actions(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        await select(pilot, ns + b"queue/")
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Keys: Watch log"].callback()
        log = app.query_one(WatchLog)
        await wait_for(pilot, lambda: log.prefix == ns + b"queue/")
        assert app.query_one("#tabs").active == "keys"


async def test_keys_typed_right_after_slash_land_in_the_filter(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        # As a terminal delivers a fast typist: every key queued before any is handled.
        for key, character in [("slash", "/"), ("q", "q"), ("u", "u"), ("n", "n")]:
            event = events.Key(key, character)
            event.set_sender(app)
            app._driver.send_message(event)  # type: ignore[union-attr]
        await wait_for(pilot, lambda: app.query_one("#key-filter", Input).value == "qun")
        assert app.screen is app.screen_stack[0]  # `n` did not open the new-key dialog
        assert app.is_running  # nor did `q` quit


async def test_history_stops_at_compaction_and_says_so(
    fresh_store: RunningStore, fresh_kv: EtcdClient
) -> None:
    for value in (b"one", b"two"):
        await fresh_kv.put(b"/h/key", value)
    two = await fresh_kv.current_revision()
    await fresh_kv.put(b"/h/key", b"three")
    await fresh_kv.compact(two)
    app = console_for(fresh_store.url, b"/h/")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, b"/h/key")
        await open_screen(pilot, "h", HistoryScreen)
        assert [entry.value for entry in app.screen.entries] == [b"three", b"two"]
        assert app.screen.compacted
