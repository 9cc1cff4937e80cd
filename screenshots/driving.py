"""Provides pilot helpers that drive the console: waiting on its state and selecting keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.pilot import Pilot

from clustertui.backend.keyspace import child_of
from clustertui.console.app import ClusterConsole


async def wait_for(pilot: Pilot, predicate: Callable[[], object], within: float = 10.0) -> None:
    """Let the app run until ``predicate()`` holds; AssertionError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in {within}s: {predicate}")
        await pilot.pause(0.05)


def console_of(pilot: Pilot) -> ClusterConsole:
    app = pilot.app
    assert isinstance(app, ClusterConsole)
    return app


async def loaded(pilot: Pilot) -> None:
    """Wait until the key tree has its top directory."""
    app = console_of(pilot)
    await wait_for(pilot, lambda: app.keys_pane.loaded.is_set())
    await pilot.pause()


async def select(pilot: Pilot, path: bytes) -> None:
    """Open the directories down to ``path`` and put the cursor on it."""
    key_tree = console_of(pilot).keys_pane.key_tree
    current = key_tree.root_prefix
    while (found := child_of(current, path)) is not None and found[1] and found[0] != path:
        current = found[0]
        await wait_for(pilot, lambda c=current: key_tree.shown(c))
        key_tree.open_directory(current)
        await wait_for(pilot, lambda c=current: c in key_tree.loaded_prefixes)
    await wait_for(pilot, lambda: key_tree.shown(path))
    key_tree.select_path(path)
    key_tree.focus()
    await pilot.pause()
