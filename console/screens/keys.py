"""Provides the key pane: the key tree, the value view and the watch log, kept live by one watch."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Input

from clustertui.backend import keyspace
from clustertui.backend.etcd import (
    DELETE,
    EtcdError,
    KeyNotFound,
    RevisionCompacted,
    diagnose,
    error_words,
)
from clustertui.backend.keyspace import Child, Entry
from clustertui.backend.text import literal as text_literal
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.edit_value import EditValueScreen
from clustertui.console.screens.history import HistoryScreen
from clustertui.console.screens.new_key import NewKey, NewKeyScreen
from clustertui.console.screens.ttl import TTLChoice, TTLScreen
from clustertui.console.session import Session
from clustertui.widgets.filter_bar import FilterBar
from clustertui.widgets.key_tree import KeyTree
from clustertui.widgets.literal import literal, plural
from clustertui.widgets.value_view import ValueView, render_value
from clustertui.widgets.watch_log import WatchLog

FLUSH_SECONDS = 0.1
"""How often queued watch events are applied: one repaint per interval, however many arrive."""

PARTIAL_SECONDS = 0.25
"""How often a directory still being listed shows what has arrived so far."""

WRITE_ACTIONS = {"new", "edit", "delete", "ttl"}
SEARCH_DEBOUNCE = 0.15
"""How long typing pauses before the filter searches the store."""
TARGET_ACTIONS = {"edit", "delete", "ttl", "history", "copy"}
"""Actions on the key under the cursor: the palette names it, or hides them without one."""


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


class KeysPane(Container):
    """The Keys tab. It arranges the widgets; the store work runs in workers."""

    DEFAULT_CSS = """
    KeysPane {
        height: 1fr;
    }
    KeysPane > Horizontal {
        height: 1fr;
    }
    """

    TARGET_ACTIONS = TARGET_ACTIONS

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new", "New", id="keys.new"),
        Binding("e", "edit", "Edit", id="keys.edit"),
        Binding("d", "delete", "Delete", id="keys.delete"),
        Binding("t", "ttl", "TTL", id="keys.ttl"),
        Binding("h", "history", "History", id="keys.history"),
        Binding("w", "watch", "Watch log", id="keys.watch"),
        Binding("y", "copy", "Copy path", id="keys.copy"),
        Binding("r", "reload", "Reload", id="keys.reload"),
        Binding("slash", "filter", "Filter", id="keys.filter"),
    ]

    @dataclass
    class RevisionSeen(Message):
        """The watch delivered a batch up to ``revision``."""

        revision: int

    def __init__(
        self,
        session: Session,
        *,
        root: bytes = b"",
        read_only: bool = False,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.session = session
        self.root = root
        """The directory the tree starts at; the whole key space when empty."""
        self.read_only = read_only
        self.last_revision = 0
        """The newest revision the tree reflects; the watch resumes after it."""
        self._search_matcher: Callable[[str], bool] | None = None
        """The filter searched for, from the moment its search starts until it is cleared."""
        self._late_hits: dict[bytes, list[bytes]] | None = None
        """While that search runs (it reads one revision): the keys written since that match."""
        self.loaded = asyncio.Event()
        """Set once the root directory has been listed."""
        self._pending: list[tuple[int, list[Any]]] = []
        self._recent: list[tuple[int, list[Any]]] = []
        self._loading = 0
        self._watching = False
        self._selected: Child | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield KeyTree(self.root, id="key-tree")
            yield ValueView(id="value-view")
        yield WatchLog(id="watch-log")
        yield FilterBar(id="key-filter")

    @property
    def key_tree(self) -> KeyTree:
        return self.query_one(KeyTree)

    @property
    def value_view(self) -> ValueView:
        return self.query_one(ValueView)

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECONDS, self._flush)
        self.key_tree.focus()
        self.load_root()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in WRITE_ACTIONS:
            return False
        return True

    # Loading ---------------------------------------------------------------------------

    @work(exclusive=True, group="keys-root")
    async def load_root(self) -> None:
        """List the top directory and every directory that was open (so a reload or a store
        back from an outage heals them), then keep it live; the cursor stays where it was."""
        cursor = self.key_tree.cursor_child
        keep = cursor.path if cursor is not None else None
        self.key_tree.reset()
        delay = 0.5
        while True:
            try:
                listing = await self._list(self.root)
            except EtcdError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        self.last_revision = max(self.last_revision, listing.revision)
        for prefix in self.key_tree.open_prefixes:
            if prefix != self.root and self.key_tree.shown(prefix):
                await self._list_healing(prefix)
        # What is loaded now lives as long as the view; a full collection that walks it
        # all again stalls the UI for a fifth of a second on a big tree, so set it aside.
        gc.freeze()
        self.loaded.set()
        if keep is not None:
            self.key_tree.select_path(keep)
        self._select(self.key_tree.cursor_child)
        if not self._watching:
            self._watching = True
            self.watch_store()

    async def _list(self, prefix: bytes) -> keyspace.Listing:
        """List a directory into the tree page by page, then replay what the watch saw."""
        self._loading += 1
        shown_at = 0.0

        def show_some(partial: keyspace.Listing) -> None:
            # A page at a time fills the view early; more often than this only repaints.
            nonlocal shown_at
            if time.monotonic() - shown_at >= PARTIAL_SECONDS:
                shown_at = time.monotonic()
                self.key_tree.show_listing(partial)

        try:
            listing = await keyspace.list_dir(self.session.client, prefix, on_page=show_some)
            self.key_tree.show_listing(listing)
            replay = [e for revision, batch in self._recent if revision > listing.revision
                      for e in batch]  # fmt: skip
            if replay:
                self.key_tree.apply_events(replay)
            return listing
        finally:
            self._loading -= 1
            if not self._loading:
                self._recent.clear()

    @on(KeyTree.LoadRequested)
    def _load_requested(self, event: KeyTree.LoadRequested) -> None:
        self.load_dir(event.prefix)

    @work(group="keys-dir")
    async def load_dir(self, prefix: bytes) -> None:
        await self._list_healing(prefix)
        gc.freeze()

    async def _list_healing(self, prefix: bytes) -> None:
        """List an open directory; while the store does not answer, say why once and try
        again until it does (or the directory is closed), so it never stays empty."""
        delay = 0.5
        told = False
        name = literal(prefix).plain or "/"
        while True:
            try:
                await self._list(prefix)
            except EtcdError as error:
                if not told:
                    told = True
                    words = error_words(error, list(self.session.settings.endpoints))
                    self.notify(
                        f"cannot list {name}: {words}; it will be listed when the store answers",
                        severity="error",
                        markup=False,
                    )
                if prefix not in self.key_tree.open_prefixes:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if told:
                self.notify(f"listed {name} now that the store answers", markup=False)
            return

    # Watching --------------------------------------------------------------------------

    @work(group="keys-watch")
    async def watch_store(self) -> None:
        """One watch over the whole key space; resumes after drops from the last revision."""
        delay = 0.2
        while True:
            start = self.last_revision + 1
            try:
                async for batch in self.session.client.watch_batches(
                    *keyspace.range_of(self.root), start_revision=start, progress_notify=True
                ):
                    delay = 0.2
                    if batch.events:
                        self._pending.append((batch.revision, batch.events))
                    self.last_revision = max(self.last_revision, batch.revision)
            except RevisionCompacted as error:
                self.notify(
                    f"the store compacted past revision {start} ({error}); the tree was reloaded",
                    title="Reloaded",
                    severity="warning",
                    markup=False,
                )
                log = self.query_one(WatchLog)
                if log.prefix is not None:
                    log.note(f"compacted past revision {start}: events before the reload are gone")
                self._pending.clear()
                self.last_revision = 0
                self._watching = False
                self.load_root()
                return
            except EtcdError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _flush(self) -> None:
        if not self._pending:
            return
        batches, self._pending = self._pending, []
        if self._loading:
            # A listing in flight may predate these; it replays them when it lands.
            self._recent.extend(batches)
        events = [event for _, batch in batches for event in batch]
        self._search_live(events)
        self.key_tree.apply_events(events)
        log = self.query_one(WatchLog)
        if log.prefix is not None:
            for revision, batch in batches:
                log.add_events(revision, [e for e in batch if e.kv.key.startswith(log.prefix)])
        selected = self._selected
        if selected is not None and not selected.is_dir:
            for event in reversed(events):
                if event.kv.key == selected.path:
                    self._show_event(event)
                    break
        self.post_message(self.RevisionSeen(batches[-1][0]))

    def _search_live(self, events: list[Any]) -> None:
        """A filter shown keeps up with the store: a key written since the search that
        matches it is shown too (keys deleted go as they always do)."""
        matcher = self._search_matcher
        if matcher is None:
            return
        hits: dict[bytes, list[bytes]] = {}
        for event in events:
            key = event.kv.key
            if event.type != DELETE and key.startswith(self.root):
                down = keyspace.search_hit(key, self.root, matcher)
                if down is not None:
                    hits[key] = down
        if self._late_hits is not None:
            self._late_hits.update(hits)
        self.key_tree.extend_search(hits)

    def _show_event(self, event: Any) -> None:
        kv = event.kv
        if event.type == DELETE:
            note = f"{literal(kv.key).plain} was deleted at revision {kv.mod_revision}"
            self.value_view.show_entry(None, note=note)
            return
        entry = Entry(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
        self.value_view.show_entry(entry, self.value_view.ttl if kv.lease else None)
        if kv.lease:
            self.fetch_value(kv.key)

    # Selection -------------------------------------------------------------------------

    @on(KeyTree.Highlighted, "#key-tree")
    def _highlighted(self, event: KeyTree.Highlighted) -> None:
        self._select(event.child)

    def _select(self, child: Child | None) -> None:
        self._selected = child
        if not self.loaded.is_set():
            self.value_view.show_entry(None, note="waiting for the store…")
            return
        if child is None or child.is_dir:
            label = literal(child.path).plain if child is not None and child.path else "/"
            count = plural(child.count if child else 0, "key")
            self.value_view.show_entry(None, note=f"{label}  {count} under it")
            return
        self.fetch_value(child.path)

    @work(exclusive=True, group="keys-value")
    async def fetch_value(self, key: bytes) -> None:
        try:
            entry = await keyspace.get_entry(self.session.client, key)
            ttl = (
                await keyspace.lease_ttl(self.session.client, entry.lease) if entry.lease else None
            )
        except KeyNotFound:
            self.value_view.show_entry(None, note=f"{literal(key).plain} is not in the store")
            return
        except EtcdError as error:
            self.value_view.show_entry(None, note=f"cannot read it: {_error_text(error)}")
            return
        if self._selected is not None and self._selected.path == key:
            self.value_view.show_entry(entry, ttl)

    # Actions ---------------------------------------------------------------------------

    def _current(self) -> Child | None:
        return self.key_tree.cursor_child

    def _directory(self) -> str:
        child = self._current()
        if child is None:
            return "/"
        if child.is_dir:
            return child.path.decode("utf-8", "backslashreplace") or "/"
        parent = child.path.rsplit(b"/", 1)[0] + b"/"
        return parent.decode("utf-8", "backslashreplace")

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_key(self, event: events.Key) -> None:
        # Bindings run only once a key has bubbled up to the app, by which time the keys
        # typed right after `/` have already gone to the tree. So the filter opens here,
        # as `/` passes, and the keys behind it are handed over as they follow.
        dialog = self.app.screen
        if isinstance(dialog, NewKeyScreen) and dialog is not self.screen:
            dialog.type_ahead(event)
            event.stop()
            event.prevent_default()
            return
        filter_bar = self.query_one(FilterBar)
        keymap: dict[str, str] = getattr(self.app, "user_keymap", {})
        opening = self.screen.focused is not filter_bar
        if opening and event.key in keymap.get("keys.filter", "slash").split(","):
            filter_bar.open()
        elif opening and not self.read_only and event.key in keymap.get("keys.new", "n").split(","):
            # The same for `n`: the dialog is up before the keys behind it are read, so
            # they reach its fields (a quick tab included) instead of the tree.
            self.action_new()
        elif not filter_bar.type_ahead(event):
            return
        event.stop()
        event.prevent_default()

    @on(FilterBar.Applied)
    def _filter_applied(self, event: FilterBar.Applied) -> None:
        self._search_matcher = None
        if event.matcher is None:
            self.workers.cancel_group(self, "keys-search")
            self.key_tree.set_search(None)
            self.key_tree.set_filter(None)
            event.bar.border_title = None
            return
        self.search_store(event.bar, event.matcher)

    @work(exclusive=True, group="keys-search")
    async def search_store(self, bar: FilterBar, matcher: Any) -> None:
        """The filter searches every key in the store (not only the directories listed),
        then shows just the matches and opens the directories down to them."""
        # The console may close while the store answers: the tree is then gone.
        with contextlib.suppress(NoMatches):
            await self._search_store(bar, matcher)

    async def _search_store(self, bar: FilterBar, matcher: Any) -> None:
        await asyncio.sleep(SEARCH_DEBOUNCE)
        self._search_matcher = matcher
        self._late_hits = {}
        bar.border_title = Text("searching the store…")
        try:
            found = await keyspace.search(self.session.client, self.root, matcher)
        except EtcdError as error:
            self._late_hits = None
            words = error_words(error, self._endpoints())
            bar.border_title = Text(f"cannot search: {words}")
            return
        tree = self.key_tree
        tree.set_filter(None)
        late, self._late_hits = self._late_hits or {}, None
        for key, down in late.items():
            found.keys.add(key)
            found.directories.update(down)
        tree.set_search((found.keys, found.directories))
        more = f" (the first {len(found.keys):,}: refine it)" if found.truncated else ""
        bar.border_title = Text(
            f"{plural(len(found.keys), 'key')} of {found.scanned:,} match{more}"
        )
        for prefix in sorted(found.directories):
            if prefix in tree.loaded_prefixes:
                if prefix not in tree.open_prefixes:
                    tree.open_directory(prefix)
                continue
            tree.open_quietly(prefix)
            try:
                await self._list(prefix)
            except EtcdError:
                continue

    @on(Input.Submitted, "#key-filter")
    def _filter_submitted(self) -> None:
        self.key_tree.focus()

    def action_reload(self) -> None:
        self.load_root()
        self.notify("reloading the key tree", markup=False)

    def action_copy(self) -> None:
        child = self._current()
        if child is None or not child.path:
            return
        text = child.path.decode("utf-8", "backslashreplace")
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {literal(text).plain}", markup=False)

    def action_watch(self) -> None:
        log = self.query_one(WatchLog)
        child = self._current()
        if log.prefix is not None:
            # Focus inside the log would vanish with it: the pane's keys would stop working.
            had_focus = self.screen.focused is log or self.screen.focused is None
            log.stop()
            if had_focus:
                self.key_tree.focus()
            return
        prefix = child.path if child is not None else self.root
        log.start(prefix)

    def action_new(self) -> None:
        async def save(answer: NewKey) -> str | None:
            return await self.write_key(answer.key, answer.value, answer.ttl)

        self.app.push_screen(NewKeyScreen(self._directory(), save))

    def action_edit(self) -> None:
        child = self._current()
        entry = self.value_view.entry
        if child is None or child.is_dir or entry is None or entry.key != child.path:
            self.notify("select a key to edit its value", severity="warning", markup=False)
            return
        kind, _ = render_value(entry.value)
        if kind == "binary":
            self.notify("binary values cannot be edited as text", severity="warning", markup=False)
            return
        text = entry.value.decode("utf-8")
        if text_literal(text, lines=True) != text:
            # The editor would draw them raw: an ESC in a value must not reach the terminal.
            self.notify(
                "values with control characters (escape sequences) cannot be edited as text",
                severity="warning",
                markup=False,
            )
            return
        language = kind if kind in ("json", "yaml") else None

        def edited(text: str | None) -> None:
            if text is not None:
                self.put_key(child.path, text.encode(), None, keep_lease=entry.lease)

        self.app.push_screen(EditValueScreen(child.path, text, language), edited)

    @work(group="keys-write")
    async def put_key(self, key: bytes, value: bytes, ttl: int | None, keep_lease: int = 0) -> None:
        await self.write_key(key, value, ttl, keep_lease)

    async def write_key(
        self, key: bytes, value: bytes, ttl: int | None, keep_lease: int = 0
    ) -> str | None:
        """Write one key and say so; returns why it failed (also notified), or None."""
        name = literal(key).plain
        try:
            await keyspace.put(self.session.client, key, value, ttl, lease=keep_lease)
        except EtcdError as error:
            typed = await diagnose(self.session.client, error)
            words = f"cannot write {name}: {error_words(typed, self._endpoints())}"
            self.notify(words, severity="error", markup=False)
            return words
        lease = f" with a TTL of {ttl}s" if ttl else ""
        self.notify(f"wrote {name}{lease}", markup=False)
        return None

    def _endpoints(self) -> list[str]:
        return list(self.session.settings.endpoints)

    @work(group="keys-write")
    async def action_delete(self) -> None:
        child = self._current()
        if child is None or child.path == self.root:
            self.notify("select a key or a directory to delete", severity="warning", markup=False)
            return
        try:
            count = await keyspace.count_under(self.session.client, child.path, child.is_dir)
        except EtcdError as error:
            self.notify(f"cannot count the keys: {error}", severity="error", markup=False)
            return
        question = Text("Delete ")
        question.append_text(literal(child.path, "bold"))
        if child.is_dir:
            question.append(f" and every key under it: {count:,} key{'s' if count != 1 else ''}?")
        else:
            question.append("?")
        if not await self.app.push_screen_wait(ConfirmScreen("Delete", question)):
            return
        try:
            deleted = await keyspace.delete(self.session.client, child.path, child.is_dir)
        except EtcdError as error:
            self.notify(
                f"cannot delete {literal(child.path).plain}: {error}",
                severity="error",
                markup=False,
            )
            return
        self.notify(f"deleted {deleted:,} key{'s' if deleted != 1 else ''}", markup=False)

    @work(group="keys-write")
    async def action_ttl(self) -> None:
        child = self._current()
        if child is None or child.path == self.root:
            self.notify(
                "select a key or a directory below the top", severity="warning", markup=False
            )
            return
        what = Text("TTL for ")
        what.append_text(literal(child.path, "bold"))
        if child.is_dir:
            what.append(": one lease covers every key under it")
        choice: TTLChoice | None = await self.app.push_screen_wait(TTLScreen(what))
        if choice is None:
            return
        try:
            changed = await keyspace.set_ttl(
                self.session.client, child.path, child.is_dir, choice.ttl
            )
        except EtcdError as error:
            self.notify(f"cannot set the TTL: {error}", severity="error", markup=False)
            return
        done = f"TTL {choice.ttl}s set" if choice.ttl else "TTL cleared"
        self.notify(f"{done} on {changed:,} key{'s' if changed != 1 else ''}", markup=False)
        if not child.is_dir:
            self.fetch_value(child.path)

    @work(group="keys-history")
    async def action_history(self) -> None:
        child = self._current()
        if child is None or child.is_dir:
            self.notify("select a key to see its history", severity="warning", markup=False)
            return
        try:
            entries, compacted = await keyspace.history(self.session.client, child.path)
        except EtcdError as error:
            self.notify(f"cannot read the history: {error}", severity="error", markup=False)
            return
        await self.app.push_screen_wait(HistoryScreen(child.path, entries, compacted))
