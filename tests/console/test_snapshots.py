"""Snapshot tests of the console's looks: key pane, JSON value, edit, delete, help, reconnecting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustertui.backend.demo import seed_store
from screenshots.scenes import SCENES, Scene, scene_console
from tests.harness.etcd import EtcdMember, start_etcd
from tests.harness.procs import free_port


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """A real store holding the demo tree; the scenes only read, so they share it."""
    member = start_etcd(tmp_path_factory.mktemp("snapshots"))
    asyncio.run(seed_store(member.url))
    yield member
    member.stop()


@pytest.mark.parametrize("scene", SCENES, ids=[scene.name for scene in SCENES])
def test_the_console_looks_as_recorded(
    scene: Scene, demo_store: EtcdMember, snap_compare, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if scene.store_down else demo_store.url
    assert snap_compare(scene_console(url), run_before=scene.drive, terminal_size=scene.size)
