"""The Subnets pane and `clusterctl list-subnets -l` on a real overlay: VtepMAC, route here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.overlay.routes import kernel_routes
from clustertui.console import cluster
from tests.harness.procs import REPO
from tests.netns.test_overlay_dataplane import all_programmed, mac_of, wait_for
from tests.netns.topology import Topology, in_ns
from tests.panes.conftest import console_on, running
from tests.panes.conftest import wait_for as wait_in_pilot

pytestmark = pytest.mark.slow
PREFIX = "/coreos.com/network"


async def test_the_subnets_pane_shows_vtep_macs_and_the_routes_of_the_host_it_runs_on(
    topology: Topology, underlay_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = underlay_store.url
    config = {"Network": "10.214.0.0/16", "Backend": {"Type": "vxlan"}}
    client = make_client([url])
    try:
        await client.put(f"{PREFIX}/config".encode(), json.dumps(config).encode())
    finally:
        await client.close()
    one, two = topology.add_host("h1"), topology.add_host("h2")
    for host in (one, two):
        topology.start_overlay(host, url, PREFIX)
    for host in (one, two):
        topology.add_container(host, topology.subnet_env(host))
    wait_for(all_programmed(topology, [one, two]), 10, "routes to every peer")

    # clusterctl list-subnets -l: the VtepMAC column is each host's flannel.1 MAC.
    listed = subprocess.run(
        [sys.executable, "-m", "clustertui.console.ctl", "--endpoint", url, "list-subnets", "-l"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
    assert listed.splitlines()[0].split()[-1] == "VTEP-MAC"
    for host in (one, two):
        assert rows[str(host.subnet)][-1] == mac_of(host.ns)

    # The console "on" host 1: its routes are host 1's /proc/net/route.
    table = tmp_path / "route"
    table.write_text(in_ns(one.ns, "cat", "/proc/net/route"))
    monkeypatch.setattr(cluster, "kernel_routes", lambda: kernel_routes(table))
    app = console_on(url)
    async with running(app) as pilot:
        await wait_in_pilot(pilot, lambda: app.model.loaded.is_set())
        await pilot.press("4")
        await pilot.pause()
        pane = app.subnets_pane.table

        def shown() -> dict[str, tuple[str, ...]]:
            return {row.cells[0]: row.cells for row in pane.rows}

        await wait_in_pilot(pilot, lambda: len(shown()) == 2 and all(
            cells[6] != "-" for cells in shown().values()), within=10)  # fmt: skip
        cells = shown()
        assert cells[str(two.subnet)][5:] == (mac_of(two.ns), "flannel.1")
        assert cells[str(one.subnet)][5:] == (mac_of(one.ns), "cbr0")
