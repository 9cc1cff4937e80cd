"""Fixtures for the cluster pane tests: a demo cluster per module, consoles, unit processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from clustertui.backend import demo
from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from clustertui.backend.fleet.runner import process_start_time
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.session import Session
from screenshots.driving import wait_for

SIZE = (120, 36)

__all__ = [
    "SIZE",
    "console_on",
    "registry_on",
    "running",
    "shown",
    "unit_pid",
    "units_running",
    "wait_for",
]


def shown(app: App[object], screen: type[Screen[object]], selector: str) -> bool:
    """``screen`` is up with ``selector`` mounted in it: a pushed screen composes a moment
    after it becomes ``app.screen``, and a key pressed before then is lost."""
    return isinstance(app.screen, screen) and bool(app.screen.query(selector))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[demo.DemoCluster]:
    """The demo cluster (store, 3 `clusterd node` processes, sample units), shared by a module."""
    running = asyncio.run(demo.start_cluster(tmp_path_factory.mktemp("cluster")))
    yield running
    running.stop()


def console_on(url: str, **kwargs: object) -> ClusterConsole:
    session = Session(
        ClusterSettings(
            name="test", endpoints=(url,), read_only=bool(kwargs.pop("read_only", False))
        )
    )
    return ClusterConsole(
        session, cluster_name="test", read_only=session.settings.read_only, **kwargs
    )  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(app: ClusterConsole) -> AsyncIterator[Pilot]:
    """Run ``app`` headless, then close its store client (its gRPC channel) in the same loop."""
    async with app.run_test(size=SIZE) as pilot:
        yield pilot
    await app.session.close()


def registry_on(url: str) -> Registry:
    return Registry(make_client([url]))


def unit_pid(cluster: demo.DemoCluster, unit: str) -> int | None:
    """The PID of ``unit``'s main process on any node of ``cluster``, if it is running."""
    for record in Path(cluster.nodes.data_dir).glob(f"node*/run/{unit}.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        pid = int(data["pid"])
        if process_start_time(pid) == str(data["start_time"]):
            return pid
    return None


def units_running(cluster: demo.DemoCluster, units: list[str]) -> list[str]:
    return [unit for unit in units if unit_pid(cluster, unit) is not None]


async def open_units(pilot: Pilot) -> ClusterConsole:
    app = pilot.app
    assert isinstance(app, ClusterConsole)
    await wait_for(pilot, lambda: app.model.loaded.is_set())
    await pilot.press("3")
    await wait_for(pilot, lambda: app.units_pane.table.has_focus)
    return app
