"""Fixtures for the console tests: a console app on a real store, and waits on its state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from backend.etcd import EtcdClient
from console.app import ClusterConsole
from console.config import ClusterSettings
from console.screens.keys import KeysPane
from console.session import Session
from widgets.key_tree import KeyTree

SIZE = (120, 36)


def console_for(url: str, root: bytes = b"", **kwargs: object) -> ClusterConsole:
    """A console on the store at ``url`` with its tree rooted at ``root``."""
    session = Session(ClusterSettings(name="test", endpoints=(url,)))
    return ClusterConsole(session, root=root.decode(), **kwargs)  # type: ignore[arg-type]


async def wait_for(pilot: Pilot, predicate: Callable[[], object], within: float = 10.0) -> None:
    """Let the app run until ``predicate()`` holds; fail with the app's screen otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in {within}s: {predicate}")
        await pilot.pause(0.05)


def pane(app: ClusterConsole) -> KeysPane:
    return app.query_one(KeysPane)


def tree(app: ClusterConsole) -> KeyTree:
    return app.query_one(KeyTree)


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, ClusterConsole)
    await wait_for(pilot, lambda: pane(app).loaded.is_set())
    await pilot.pause()


async def select(pilot: Pilot, path: bytes) -> None:
    """Open the directories down to ``path`` and put the cursor on it."""
    app = pilot.app
    assert isinstance(app, ClusterConsole)
    key_tree = tree(app)
    root = key_tree.root_prefix
    rest = path[len(root) :]
    parts = rest.split(b"/")
    current = root
    for part in parts[:-1]:
        current = current + part + b"/"
        if current == root:
            continue
        await wait_for(pilot, lambda c=current: key_tree.node_for(c) is not None)
        node = key_tree.node_for(current)
        assert node is not None
        node.expand()
        await wait_for(pilot, lambda c=current: c in key_tree.loaded_prefixes)
    await wait_for(pilot, lambda: key_tree.node_for(path) is not None)
    node = key_tree.node_for(path)
    assert node is not None
    key_tree.move_cursor(node)
    key_tree.focus()
    await pilot.pause()


async def seed(kv: EtcdClient, ns: bytes) -> None:
    """A small tree under ``ns``: nested directories, JSON, plain text, a queue."""
    await kv.put(ns + b"config/app/db", json.dumps({"host": "db", "port": 5432}).encode())
    await kv.put(ns + b"config/app/level", b"info")
    await kv.put(ns + b"config/web/motd", b"hello")
    for number in range(3):
        await kv.put(ns + f"queue/{number:04d}".encode(), b"job")
    await kv.put(ns + b"top", b"plain")


@pytest.fixture
def size() -> tuple[int, int]:
    return SIZE
