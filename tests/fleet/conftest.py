"""Fixtures for the scheduler tests: a registry under the test's own prefix, real nodes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.agent import Agent
from clustertui.backend.fleet.registry import Machine, Registry
from tests.harness.procs import REPO, Child

UnitOutput = list[tuple[str, str, bytes]]


@pytest.fixture
async def registry(kv: EtcdClient, ns: bytes) -> AsyncIterator[Registry]:
    """A registry under a prefix of this test's own, on each store kind."""
    yield Registry(kv, ns.decode() + "fleet/")


class RecordingSink:
    """Collects unit output in memory, the way the journal writer receives it."""

    def __init__(self) -> None:
        self.lines: UnitOutput = []

    def line(
        self,
        message: bytes,
        *,
        unit: str,
        identifier: str,
        pid: int,
        priority: int = 6,
        stream: str = "stdout",
    ) -> None:
        self.lines.append((unit, stream, message))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def messages(self, unit: str) -> list[str]:
        """What the unit wrote, and the runner's notes about it; not the state lines."""
        return [m.decode() for u, stream, m in self.lines if u == unit and stream != "journal"]

    def system(self, unit: str) -> list[str]:
        """The service manager's own lines for the unit: "Starting…", "Stopped…"."""
        return [m.decode() for u, stream, m in self.lines if u == unit and stream == "journal"]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def start_agent(
    client: EtcdClient,
    registry: Registry,
    machine: Machine,
    data_dir: Path,
    sink: RecordingSink,
    *,
    ttl: float,
    reconcile_interval: float,
) -> tuple[Agent, asyncio.Event, asyncio.Task[None]]:
    """An agent for ``machine`` running in this process on a task of its own; set the event
    and await the task to stop it."""
    agent = Agent(
        client, registry, machine, data_dir=data_dir, sink=sink, ttl=ttl,
        reconcile_interval=reconcile_interval,
    )  # fmt: skip
    stop = asyncio.Event()
    return agent, stop, asyncio.create_task(agent.run(stop))


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll ``check`` until it holds; the scheduler's effects arrive through the store."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


class NodeFactory:
    """Starts real `clusterd node` processes against one store and prefix."""

    def __init__(self, url: str, prefix: str, root: Path) -> None:
        self.url = url
        self.prefix = prefix
        self.root = root
        self.children: list[Child] = []

    def start(self, name: str, *extra: str, ttl: str = "1s", machine_id: str = "") -> Child:
        data_dir = self.root / name
        argv = [
            sys.executable, "-m", "clustertui.backend.daemon", "node",
            "--endpoints", self.url,
            "--data-dir", str(data_dir),
            "--key-prefix", self.prefix,
            "--agent-ttl", ttl,
            "--engine-reconcile-interval", "0.5s",
            "--public-ip", "127.0.0.1",
            "--no-overlay",
            *extra,
        ]  # fmt: skip
        if machine_id:
            argv += ["--machine-id", machine_id]
        child = Child(name, argv, self.root / f"{name}.log", cwd=REPO)
        child.start()
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            child.stop(timeout=15)


@pytest.fixture
def nodes(store: object, ns: bytes, tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(store.url, ns.decode() + "fleet/", tmp_path)  # type: ignore[attr-defined]
    yield factory
    factory.stop_all()
