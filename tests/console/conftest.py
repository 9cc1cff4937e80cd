"""Fixtures for the console tests: a console app on a real store, and a sample tree."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from textual.pilot import Pilot
from textual.screen import Screen

from clustertui.backend.etcd import EtcdClient
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.screens.keys import KeysPane
from clustertui.console.session import Session
from clustertui.widgets.key_tree import KeyTree
from screenshots.driving import loaded, select, wait_for

SIZE = (120, 36)

__all__ = [
    "SIZE",
    "console_for",
    "loaded",
    "open_screen",
    "pane",
    "seed",
    "seeded_console",
    "select",
    "tree",
    "wait_for",
]


def console_for(url: str, root: bytes = b"", **kwargs: object) -> ClusterConsole:
    """A console on the store at ``url`` with its tree rooted at ``root``."""
    session = Session(ClusterSettings(name="test", endpoints=(url,)))
    return ClusterConsole(session, root=root.decode(), **kwargs)  # type: ignore[arg-type]


def pane(app: ClusterConsole) -> KeysPane:
    return app.keys_pane


def tree(app: ClusterConsole) -> KeyTree:
    return app.keys_pane.key_tree


async def seed(kv: EtcdClient, ns: bytes) -> None:
    """A small tree under ``ns``: nested directories, JSON, plain text, a queue."""
    await kv.put(ns + b"config/app/db", json.dumps({"host": "db", "port": 5432}).encode())
    await kv.put(ns + b"config/app/level", b"info")
    await kv.put(ns + b"config/web/motd", b"hello")
    for number in range(3):
        await kv.put(ns + f"queue/{number:04d}".encode(), b"job")
    await kv.put(ns + b"top", b"plain")


@contextlib.asynccontextmanager
async def seeded_console(
    url: str, kv: EtcdClient, ns: bytes, **kwargs: object
) -> AsyncIterator[tuple[ClusterConsole, Pilot[None]]]:
    """The sample tree under ``ns``, and a console on it that has listed it."""
    await seed(kv, ns)
    app = console_for(url, ns, **kwargs)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        yield app, pilot


async def open_screen(pilot: Pilot[None], key: str, kind: type[Screen[object]]) -> None:
    """Press ``key`` and wait until the screen it opens is on top."""
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, kind))
