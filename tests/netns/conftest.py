"""Fixtures for the overlay's network-namespace tests: a topology per test, always torn down."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.topology import Topology, sweep_leftovers


def _require_root() -> None:
    # These tests build network namespaces: they need root. CI runs as root, so there a
    # missing privilege is a failure, never a skip.
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("the netns tests need root and iproute2 (CI runs as root)")
        pytest.skip("the netns tests need root and iproute2")


@pytest.fixture(scope="session", autouse=True)
def _sweep() -> Iterator[None]:
    """Namespaces left by a killed run (its pid is gone) are removed before and after."""
    if os.geteuid() == 0 and shutil.which("ip"):
        sweep_leftovers()
    yield
    if os.geteuid() == 0 and shutil.which("ip"):
        sweep_leftovers()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    _require_root()
    made = Topology(tmp_path)
    try:
        made.create()
        yield made
    finally:
        made.destroy()


@pytest.fixture
def underlay_store(request: pytest.FixtureRequest, topology: Topology) -> Iterator[object]:
    """A store listening on the underlay (etcd unless the test asks for another kind)."""
    from tests.netns.topology import start_store

    kind = getattr(request, "param", "etcd")
    store = start_store(kind, topology.workdir / "store", topology.store_ip)
    try:
        yield store
    finally:
        store.stop()
