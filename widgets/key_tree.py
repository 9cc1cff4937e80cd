"""Provides the key tree: the key space split on `/`, loaded one directory at a time."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from console.keyspace import Child, Listing, child_of, display_name
from widgets.filter_bar import Matcher
from widgets.literal import literal, plural

PUT, DELETE = 0, 1
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

    def insert(self, child: Child) -> int:
        at = bisect.bisect_left(self.paths, child.path)
        self.paths.insert(at, child.path)
        self.children[child.path] = child
        return at

    def remove(self, path: bytes) -> None:
        self.paths.pop(bisect.bisect_left(self.paths, path))
        del self.children[path]

    @property
    def total(self) -> int:
        return sum(child.count for child in self.children.values())


class KeyTree(Tree[Child]):
    """The key space as ``etcdctl ls`` shows it, with a count of keys on each directory.

    The tree never talks to the store: it asks for directories with
    :class:`KeyTree.LoadRequested` and is fed listings and watch events.
    """

    DEFAULT_CSS = """
    KeyTree {
        width: 1fr;
        min-width: 30;
    }
    KeyTree > .tree--label {
        text-style: none;
    }
    """

    @dataclass
    class LoadRequested(Message):
        """The user opened a directory that is not loaded yet."""

        tree: KeyTree
        prefix: bytes

        @property
        def control(self) -> KeyTree:
            return self.tree

    def __init__(self, root: bytes = b"", *, id: str | None = None) -> None:
        name = root.decode("utf-8", "backslashreplace") or "/"
        super().__init__(literal(name), Child(name, root, True, 0), id=id)
        self.root_prefix = root
        """The directory at the top of the tree; the whole key space when empty."""
        self.guide_depth = 3
        self._loaded: dict[bytes, _Dir] = {}
        self._path_nodes: dict[bytes, TreeNode[Child]] = {root: self.root}
        self._open_dirs: set[bytes] = {root}
        self._flash_paths: set[bytes] = set()
        self._name_filter: Matcher | None = None
        self.root.expand()

    @property
    def loaded_prefixes(self) -> list[bytes]:
        return list(self._loaded)

    def children_of(self, prefix: bytes) -> list[Child]:
        """The children of a loaded directory, in key order (filter not applied)."""
        loaded = self._loaded.get(prefix)
        return [loaded.children[path] for path in loaded.paths] if loaded else []

    def shown(self, path: bytes) -> bool:
        """Whether a node for ``path`` is in the tree now."""
        return path in self._path_nodes

    def node_for(self, path: bytes) -> TreeNode[Child] | None:
        return self._path_nodes.get(path)

    def reset(self) -> None:
        """Forget every listing, keeping which directories were open."""
        for path in list(self._path_nodes):
            if path != self.root_prefix:
                self._path_nodes.pop(path)
        self.root.remove_children()
        self._loaded.clear()

    def _label_root(self) -> None:
        loaded = self._loaded.get(self.root_prefix)
        if loaded is None or self.root.data is None:
            return
        self.root.data.count = loaded.total
        label = literal(self.root.data.name, "bold")
        label.append(f"  {plural(loaded.total, 'key')}", style="dim")
        self.root.set_label(label)

    def _label(self, child: Child) -> Text:
        style = "reverse" if child.path in self._flash_paths else ""
        if not child.is_dir:
            return literal(child.name, style)
        label = literal(child.name, style or "bold")
        label.append(f"  {child.count:,}", style="dim")
        return label

    def _visible(self, child: Child) -> bool:
        return self._name_filter is None or child.is_dir or self._name_filter(child.name)

    def _add(self, parent: TreeNode[Child], child: Child, before: Any = None) -> TreeNode[Child]:
        node = parent.add(self._label(child), child, before=before, allow_expand=child.is_dir)
        self._path_nodes[child.path] = node
        return node

    def _forget(self, node: TreeNode[Child]) -> None:
        """Drop a node's descendants from the indexes (the tree drops the nodes themselves)."""
        for child in node.children:
            if child.data is not None:
                self._path_nodes.pop(child.data.path, None)
                self._loaded.pop(child.data.path, None)
            self._forget(child)

    def _render_dir(self, prefix: bytes) -> None:
        node = self._path_nodes.get(prefix)
        loaded = self._loaded.get(prefix)
        if node is None or loaded is None:
            return
        for child_node in node.children:
            if child_node.data is not None:
                self._path_nodes.pop(child_node.data.path, None)
        node.remove_children()
        for path in loaded.paths:
            child = loaded.children[path]
            if self._visible(child):
                added = self._add(node, child)
                if child.is_dir and path in self._open_dirs:
                    added.expand()
                    self._render_dir(path)
        if prefix == self.root_prefix:
            self._label_root()

    def show_listing(self, listing: Listing) -> None:
        """Fill a directory from a fresh listing."""
        self._loaded[listing.prefix] = _Dir.of(listing)
        self._render_dir(listing.prefix)
        node = self._path_nodes.get(listing.prefix)
        if node is not None and node.data is not None and listing.prefix != self.root_prefix:
            node.data.count = self._loaded[listing.prefix].total
            node.set_label(self._label(node.data))

    def set_filter(self, matcher: Matcher | None) -> None:
        self._name_filter = matcher
        self._render_dir(self.root_prefix)

    @on(Tree.NodeExpanded)
    def _expanded_node(self, event: Tree.NodeExpanded[Child]) -> None:
        child = event.node.data
        if child is None or not child.is_dir:
            return
        self._open_dirs.add(child.path)
        # The root is listed by whoever owns the tree, before anything else.
        if child.path != self.root_prefix and child.path not in self._loaded:
            self.post_message(self.LoadRequested(self, child.path))

    @on(Tree.NodeCollapsed)
    def _collapsed_node(self, event: Tree.NodeCollapsed[Child]) -> None:
        if event.node.data is not None:
            self._open_dirs.discard(event.node.data.path)

    def apply_events(self, events: Iterable[Any]) -> set[bytes]:
        """Apply one batch of watch events (``aetcd.rpc.Event``); return the keys touched.

        A directory listed at a revision ignores events at or before it, so listings and
        the watch can race without counting a key twice.
        """
        touched: set[bytes] = set()
        relabel: set[bytes] = set()
        rerender: set[bytes] = set()
        for event in events:
            key = event.kv.key
            touched.add(key)
            self._apply(event.type, key, event.kv.mod_revision, event.kv.version, relabel, rerender)
        for prefix in rerender:
            self._rerender_changed(prefix)
        flash = len(touched) <= FLASH_LIMIT
        if flash:
            self._flash_paths |= touched
            self.set_timer(FLASH_SECONDS, lambda: self._unflash(touched))
        for path in relabel | (touched if flash else set()):
            self._relabel(path)
        self._label_root()
        return touched

    def _apply(
        self,
        kind: int,
        key: bytes,
        revision: int,
        version: int,
        relabel: set[bytes],
        rerender: set[bytes],
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
                    name = display_name(prefix, path)
                    loaded.insert(Child(name, path, is_dir))
                    rerender.add(prefix)
                elif kind == PUT and is_dir and version == 1 and existing is not None:
                    existing.count += 1
                    relabel.add(path)
                elif kind == DELETE and existing is not None:
                    existing.count -= 1
                    relabel.add(path)
                    if not is_dir or existing.count <= 0:
                        loaded.remove(path)
                        rerender.add(prefix)
            if not is_dir:
                return
            prefix = path

    def _rerender_changed(self, prefix: bytes) -> None:
        """Add nodes for new children and drop nodes of gone ones, keeping the rest in place."""
        node = self._path_nodes.get(prefix)
        loaded = self._loaded.get(prefix)
        if node is None or loaded is None:
            return
        for child_node in list(node.children):
            data = child_node.data
            if data is not None and data.path not in loaded.children:
                self._forget(child_node)
                self._path_nodes.pop(data.path, None)
                self._loaded.pop(data.path, None)
                child_node.remove()
        for at, path in enumerate(loaded.paths):
            child = loaded.children[path]
            if path in self._path_nodes or not self._visible(child):
                continue
            before = None
            for later in loaded.paths[at + 1 :]:
                if later in self._path_nodes:
                    before = self._path_nodes[later]
                    break
            self._add(node, child, before=before)

    def _relabel(self, path: bytes) -> None:
        node = self._path_nodes.get(path)
        if node is not None and node.data is not None:
            node.set_label(self._label(node.data))

    def _unflash(self, paths: set[bytes]) -> None:
        self._flash_paths -= paths
        for path in paths:
            self._relabel(path)
