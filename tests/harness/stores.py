"""Provides the store implementations every store-level test runs against, by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tests.harness.bundled import start_bundled
from tests.harness.etcd import start_etcd


class RunningStore(Protocol):
    """A started store: its client URL, what it is, and how to stop or crash it."""

    kind: str

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...


STARTERS: dict[str, Callable[[Path], RunningStore]] = {
    "etcd": start_etcd,
    "bundled": start_bundled,
}
