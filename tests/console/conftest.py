"""Fixtures for the console tests: a console app on a real store, and a sample tree."""

from __future__ import annotations

import json

from backend.etcd import EtcdClient
from console.app import ClusterConsole
from console.config import ClusterSettings
from console.screens.keys import KeysPane
from console.session import Session
from screenshots.driving import loaded, select, wait_for
from widgets.key_tree import KeyTree

SIZE = (120, 36)

__all__ = ["SIZE", "console_for", "loaded", "pane", "seed", "select", "tree", "wait_for"]


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
