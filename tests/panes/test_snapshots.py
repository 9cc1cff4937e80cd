"""Snapshot tests of the cluster panes and their dialogs, on fixed data with a still clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from screenshots.pane_scenes import PANE_SCENES, pane_console, seed_cluster
from screenshots.scenes import Scene
from tests.harness.etcd import EtcdMember, start_etcd


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """A real store holding the fixed cluster; the scenes only read, so they share it."""
    member = start_etcd(tmp_path_factory.mktemp("pane-snapshots"))
    asyncio.run(seed_cluster(member.url))
    yield member
    member.stop()


@pytest.mark.parametrize("scene", PANE_SCENES, ids=[scene.name for scene in PANE_SCENES])
def test_the_cluster_panes_look_as_recorded(
    scene: Scene, scene_store: EtcdMember, snap_compare
) -> None:
    assert snap_compare(
        pane_console(scene_store.url), run_before=scene.drive, terminal_size=scene.size
    )
