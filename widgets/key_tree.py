"""Provides the key tree: the key space split on `/`, loaded one directory at a time."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from clustertui.backend.etcd import DELETE, PUT
from clustertui.backend.keys import prefix_end
from clustertui.backend.keyspace import Child, Listing, child_of, display_name
from clustertui.widgets.filter_bar import Matcher
from clustertui.widgets.literal import cell, plural

STRIP_CACHE = 4096
"""Drawn rows kept between paints; a storm mostly changes counts, not what is on screen."""
FLASH_SECONDS = 1.0
FLASH_LIMIT = 50
"""A batch that touches more keys than this flashes none: a storm would only blink."""


@dataclass
class _Dir:
    """A loaded directory: its children by path, in key order, as of ``revision``."""

    prefix: bytes
    revision: int
    paths: list[bytes] = field(default_factory=list)
    children: dict[bytes, Child] = field(default_factory=dict)

    @classmethod
    def of(cls, listing: Listing) -> _Dir:
        loaded = cls(listing.prefix, listing.revision)
        for child in listing.children:
            loaded.paths.append(child.path)
            loaded.children[child.path] = child
        return loaded

    def insert(self, child: Child) -> None:
        self.paths.insert(bisect.bisect_left(self.paths, child.path), child.path)
        self.children[child.path] = child

    def remove(self, path: bytes) -> None:
        self.paths.pop(bisect.bisect_left(self.paths, path))
        del self.children[path]

    @property
    def total(self) -> int:
        return sum(child.count for child in self.children.values())


@dataclass
class _Row:
    """One visible line: an entry and how deep it sits."""

    child: Child
    depth: int


class KeyTree(ScrollView, can_focus=True):
    """The key space as ``etcdctl ls`` shows it, with a count of keys on each directory.

    Visible rows are kept in one list in key order (a directory's path sorts just before
    everything under it), so a new key finds its row by bisection and only the lines on
    screen are ever rendered. The tree never talks to the store: it asks for directories
    with :class:`KeyTree.LoadRequested` and is fed listings and watch events.
    """

    DEFAULT_CSS = """
    KeyTree {
        width: 1fr;
        min-width: 30;
        background: $surface;
    }
    KeyTree > .key-tree--cursor {
        background: $block-cursor-blurred-background;
    }
    KeyTree:focus > .key-tree--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    KeyTree > .key-tree--directory {
        text-style: bold;
    }
    KeyTree > .key-tree--count {
        color: $text-muted;
    }
    KeyTree > .key-tree--flash {
        background: $warning 40%;
    }
    """

    COMPONENT_CLASSES = {
        "key-tree--cursor",
        "key-tree--directory",
        "key-tree--count",
        "key-tree--flash",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False, id="tree.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="tree.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="tree.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="tree.page_down"),
        Binding("home", "first", "First", show=False, id="tree.first"),
        Binding("end", "last", "Last", show=False, id="tree.last"),
        Binding("enter,space", "toggle_open", "Open/close", show=False, id="tree.toggle"),
        Binding("right", "open", "Open", show=False, id="tree.open"),
        Binding("left", "close", "Close or up", show=False, id="tree.close"),
    ]

    @dataclass
    class LoadRequested(Message):
        """The user opened a directory that is not loaded yet."""

        tree: KeyTree
        prefix: bytes

        @property
        def control(self) -> KeyTree:
            return self.tree

    @dataclass
    class Highlighted(Message):
        """The cursor moved to ``child``."""

        tree: KeyTree
        child: Child

        @property
        def control(self) -> KeyTree:
            return self.tree

    def __init__(self, root: bytes = b"", *, id: str | None = None) -> None:
        super().__init__(id=id)
        name = root.decode("utf-8", "backslashreplace") or "/"
        self.root_prefix = root
        """The directory at the top of the tree; the whole key space when empty."""
        self._root = Child(name, root, True, 0)
        self._rows: list[_Row] = [_Row(self._root, 0)]
        self._paths: list[bytes] = [root]
        self._loaded: dict[bytes, _Dir] = {}
        self._open: set[bytes] = {root}
        self._flash: set[bytes] = set()
        self._name_filter: Matcher | None = None
        self._search: tuple[set[bytes], set[bytes]] | None = None
        """Keys found by a store search and the directories down to them: only they show."""
        self.cursor = 0
        """The row the cursor is on."""
        self._announced: bytes | None = None
        self._base_style = Style()
        self._styles: dict[str, Style] = {}
        self._strips: dict[tuple[object, ...], Strip] = {}

    # Queries -----------------------------------------------------------------------------

    @property
    def loaded_prefixes(self) -> list[bytes]:
        return list(self._loaded)

    @property
    def open_prefixes(self) -> list[bytes]:
        """The open directories, parents before children."""
        return sorted(self._open)

    @property
    def visible_paths(self) -> list[bytes]:
        """The paths of the rows, top to bottom."""
        return list(self._paths)

    @property
    def cursor_child(self) -> Child | None:
        return self._rows[self.cursor].child if self._rows else None

    def children_of(self, prefix: bytes) -> list[Child]:
        """The children of a loaded directory, in key order (filter not applied)."""
        loaded = self._loaded.get(prefix)
        return [loaded.children[path] for path in loaded.paths] if loaded else []

    def row_of(self, path: bytes) -> int | None:
        """The row showing ``path``, or None when it is not on view."""
        at = bisect.bisect_left(self._paths, path)
        return at if at < len(self._paths) and self._paths[at] == path else None

    def shown(self, path: bytes) -> bool:
        return self.row_of(path) is not None

    def label_of(self, path: bytes) -> str | None:
        """The text of ``path``'s row as it is drawn, or None when it is not on view."""
        row = self.row_of(path)
        if row is None:
            return None
        self.render_lines(Region(0, 0, self.size.width, 0))
        return self._draw(row).text

    # Building rows -----------------------------------------------------------------------

    def _visible(self, child: Child) -> bool:
        if self._search is not None:
            keys, directories = self._search
            return child.path in (directories if child.is_dir else keys)
        return self._name_filter is None or child.is_dir or self._name_filter(child.name)

    def _rows_under(self, prefix: bytes, depth: int) -> list[_Row]:
        """Rows for an open directory's children, and theirs where open, in order."""
        loaded = self._loaded.get(prefix)
        if loaded is None:
            return []
        rows: list[_Row] = []
        for path in loaded.paths:
            child = loaded.children[path]
            if not self._visible(child):
                continue
            rows.append(_Row(child, depth))
            if child.is_dir and path in self._open:
                rows.extend(self._rows_under(path, depth + 1))
        return rows

    def _descendants(self, row: int) -> tuple[int, int]:
        """The slice of rows under the directory on ``row``."""
        path = self._paths[row]
        if path == b"":
            return row + 1, len(self._rows)
        return row + 1, bisect.bisect_left(self._paths, prefix_end(path), lo=row + 1)

    def _replace(self, start: int, end: int, rows: list[_Row]) -> None:
        self._rows[start:end] = rows
        self._paths[start:end] = [row.child.path for row in rows]

    def _refill(self, prefix: bytes) -> None:
        """Rebuild the rows under an open directory from its listing."""
        row = self.row_of(prefix)
        if row is None or prefix not in self._open:
            return
        start, end = self._descendants(row)
        self._replace(start, end, self._rows_under(prefix, self._rows[row].depth + 1))

    def _changed(self, keep: bytes | None = None, offset: int | None = None) -> None:
        """After rows moved: keep the cursor on ``keep`` (same screen line) and repaint."""
        if keep is not None:
            at = bisect.bisect_left(self._paths, keep)
            self.cursor = min(at, len(self._rows) - 1)
            target = max(self.cursor - offset, 0) if offset is not None else None
            if target is not None and target != int(self.scroll_y):
                self.scroll_to(y=target, animate=False, immediate=True)
        self.cursor = max(0, min(self.cursor, len(self._rows) - 1))
        self._resize_rows()
        self.refresh()
        self._announce()

    def _anchor(self) -> tuple[bytes | None, int]:
        child = self.cursor_child
        return (child.path if child else None), self.cursor - int(self.scroll_y)

    # Feeding -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every listing, keeping which directories were open."""
        self._loaded.clear()
        self._replace(1, len(self._rows), [])
        self._changed()

    def show_listing(self, listing: Listing) -> None:
        """Fill a directory from a (possibly partial) listing."""
        keep, offset = self._anchor()
        self._loaded[listing.prefix] = _Dir.of(listing)
        self._refill(listing.prefix)
        self._recount(listing.prefix)
        self._changed(keep, offset)

    def _recount(self, prefix: bytes) -> None:
        loaded = self._loaded.get(prefix)
        row = self.row_of(prefix)
        if loaded is not None and row is not None:
            self._rows[row].child.count = loaded.total

    def set_filter(self, matcher: Matcher | None) -> None:
        keep, offset = self._anchor()
        self._name_filter = matcher
        self._replace(1, len(self._rows), self._rows_under(self.root_prefix, 1))
        self._changed(keep, offset)

    def extend_search(self, hits: dict[bytes, list[bytes]]) -> None:
        """Show these keys too (each with the directories down to it) in the search shown: keys
        that came to match after it ran. Nothing changes when no search is shown."""
        if self._search is None or not hits:
            return
        keys, directories = self._search
        keys.update(hits)
        for down in hits.values():
            directories.update(down)
        self.set_search((keys, directories))

    def set_search(self, found: tuple[set[bytes], set[bytes]] | None) -> None:
        """Show only these keys and the directories down to them (None shows all again)."""
        keep, offset = self._anchor()
        self._search = found
        self._replace(1, len(self._rows), self._rows_under(self.root_prefix, 1))
        self._changed(keep, offset)

    def open_quietly(self, path: bytes) -> None:
        """Mark a directory open without asking for its listing (the caller lists it)."""
        self._open.add(path)

    def open_directory(self, path: bytes) -> None:
        """Open the directory on view at ``path``, asking for it to be listed if needed."""
        row = self.row_of(path)
        if row is None or not self._rows[row].child.is_dir or path in self._open:
            return
        self._open.add(path)
        if path in self._loaded:
            keep, offset = self._anchor()
            self._refill(path)
            self._changed(keep, offset)
        else:
            self.refresh()
            self.post_message(self.LoadRequested(self, path))

    def collapse(self, path: bytes) -> None:
        row = self.row_of(path)
        if row is None or path not in self._open or path == self.root_prefix:
            return
        keep, offset = self._anchor()
        self._open.discard(path)
        start, end = self._descendants(row)
        self._replace(start, end, [])
        if keep is not None and keep.startswith(path):
            keep = path
        self._changed(keep, offset)

    def select_path(self, path: bytes) -> bool:
        """Put the cursor on ``path`` if it is on view."""
        row = self.row_of(path)
        if row is None:
            return False
        self._move(row)
        return True

    def apply_events(self, events: Iterable[Any]) -> set[bytes]:
        """Apply one batch of watch events (``aetcd.rpc.Event``); return the keys touched.

        A directory ignores events at or before the revision it was listed at or last
        brought up to, so listings and the watch can race, and batches can be replayed,
        without counting a key twice.
        """
        keep, offset = self._anchor()
        touched: set[bytes] = set()
        added: list[tuple[bytes, Child]] = []
        removed: list[bytes] = []
        newest = 0
        for event in events:
            kv = event.kv
            touched.add(kv.key)
            newest = max(newest, kv.mod_revision)
            self._apply(event.type, kv.key, kv.mod_revision, kv.version, added, removed)
        # Every loaded directory has now seen the batch, so replaying it changes nothing.
        for loaded in self._loaded.values():
            loaded.revision = max(loaded.revision, newest)
        for path in removed:
            row = self.row_of(path)
            if row is not None:
                end = self._descendants(row)[1] if self._rows[row].child.is_dir else row + 1
                self._replace(row, end, [])
        for parent, child in added:
            parent_row = self.row_of(parent)
            if parent_row is None or parent not in self._open or not self._visible(child):
                continue
            if self.row_of(child.path) is not None:
                continue
            at = bisect.bisect_left(self._paths, child.path)
            self._replace(at, at, [_Row(child, self._rows[parent_row].depth + 1)])
        self._recount(self.root_prefix)
        if len(touched) <= FLASH_LIMIT:
            self._flash |= touched
            self.set_timer(FLASH_SECONDS, lambda: self._unflash(touched))
        if keep is not None and self.row_of(keep) is None:
            # The key under the cursor went: stay on the same line, on its neighbour.
            self.cursor = min(self.cursor, len(self._rows) - 1)
            keep = self._paths[self.cursor]
        self._changed(keep, offset)
        return touched

    def _apply(
        self,
        kind: int,
        key: bytes,
        revision: int,
        version: int,
        added: list[tuple[bytes, Child]],
        removed: list[bytes],
    ) -> None:
        prefix = self.root_prefix
        while (loaded := self._loaded.get(prefix)) is not None:
            found = child_of(prefix, key)
            if found is None:
                return
            path, is_dir = found
            if revision > loaded.revision:
                existing = loaded.children.get(path)
                if kind == PUT and existing is None:
                    child = Child(display_name(prefix, path), path, is_dir)
                    loaded.insert(child)
                    added.append((prefix, child))
                elif kind == PUT and is_dir and version == 1 and existing is not None:
                    existing.count += 1
                elif kind == DELETE and existing is not None:
                    existing.count -= 1
                    if not is_dir or existing.count <= 0:
                        loaded.remove(path)
                        removed.append(path)
                        self._drop(path)
            if not is_dir:
                return
            prefix = path

    def _drop(self, path: bytes) -> None:
        """Forget listings under a directory that has gone."""
        for prefix in [p for p in self._loaded if p.startswith(path)]:
            del self._loaded[prefix]

    def _unflash(self, paths: set[bytes]) -> None:
        self._flash -= paths
        self.refresh()

    # Cursor and keys ---------------------------------------------------------------------

    def _move(self, row: int) -> None:
        self.cursor = max(0, min(row, len(self._rows) - 1))
        height = self.scrollable_content_region.height or 1
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)
        self.refresh()
        self._announce()

    def _announce(self) -> None:
        child = self.cursor_child
        if child is not None and child.path != self._announced:
            self._announced = child.path
            self.post_message(self.Highlighted(self, child))

    def action_cursor(self, step: int) -> None:
        self._move(self.cursor + step)

    def action_page(self, direction: int) -> None:
        height = self.scrollable_content_region.height or 1
        self._move(self.cursor + direction * height)

    def action_first(self) -> None:
        self._move(0)

    def action_last(self) -> None:
        self._move(len(self._rows) - 1)

    def action_toggle_open(self) -> None:
        child = self.cursor_child
        if child is None or not child.is_dir:
            return
        if child.path in self._open:
            self.collapse(child.path)
        else:
            self.open_directory(child.path)

    def action_open(self) -> None:
        child = self.cursor_child
        if child is not None and child.is_dir:
            self.open_directory(child.path)

    def action_close(self) -> None:
        child = self.cursor_child
        if child is None:
            return
        if child.is_dir and child.path in self._open and child.path != self.root_prefix:
            self.collapse(child.path)
            return
        depth = self._rows[self.cursor].depth
        for row in range(self.cursor - 1, -1, -1):
            if self._rows[row].depth < depth:
                self._move(row)
                return

    def on_click(self, event: events.Click) -> None:
        row = int(self.scroll_y) + event.y
        if not 0 <= row < len(self._rows):
            return
        if row == self.cursor:
            self.action_toggle_open()
        else:
            self._move(row)

    # Rendering ---------------------------------------------------------------------------

    def on_resize(self) -> None:
        self._resize_rows()

    def _resize_rows(self) -> None:
        size = Size(self.size.width, len(self._rows))
        if size != self.virtual_size:
            # Assigning virtual_size lays the whole screen out again; a tree that grows with
            # every watch batch only needs its scrollbar told.
            self.set_reactive(ScrollView.virtual_size, size)
            self._scroll_update(size)

    def render_lines(self, crop: Region) -> list[Strip]:
        # Looking styles up walks every ancestor: once per paint, not once per line.
        self._styles = {
            name: self.get_component_rich_style(f"key-tree--{name}")
            for name in ("cursor", "directory", "count", "flash")
        }
        self._base_style = self.rich_style
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        row = int(self.scroll_y) + y
        if row >= len(self._rows):
            return Strip.blank(self.scrollable_content_region.width, self._base_style)
        return self._draw(row)

    def _draw(self, row: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self._base_style
        entry = self._rows[row]
        child = entry.child
        is_open = child.path in self._open
        flash = child.path in self._flash
        cursor = row == self.cursor
        key = (child.path, child.count, entry.depth, is_open, flash, cursor, width, base)
        cached = self._strips.get(key)
        if cached is not None:
            return cached
        styles = self._styles
        lead = "  " * entry.depth + (("▼ " if is_open else "▶ ") if child.is_dir else "  ")
        segments = [
            Segment(lead),
            Segment(cell(child.name), styles["directory"] if child.is_dir else None),
        ]
        if child.is_dir:
            count = plural(child.count, "key") if child is self._root else f"{child.count:,}"
            segments.append(Segment(f"  {count}", styles["count"]))
        strip = Strip(segments).apply_style(base)
        strip = strip.crop_extend(0, width, base)
        # Highlights go over the row's own colours (apply_style would go under them).
        for on, name in ((flash, "flash"), (cursor, "cursor")):
            if on:
                strip = Strip(Segment.apply_style(iter(strip), post_style=styles[name]), width)
        if len(self._strips) > STRIP_CACHE:
            self._strips.clear()
        self._strips[key] = strip
        return strip
