"""Pilot tests of the machines and subnets panes on a real demo cluster."""

from __future__ import annotations

import json
import os

import pytest

from clustertui.backend import demo
from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Machine
from clustertui.console.app import ClusterConsole
from clustertui.console.journal_stream import MachineAccess
from clustertui.console.tunnel import Tunnel, TunnelSpec
from tests.panes.conftest import console_on, running, wait_for

pytestmark = pytest.mark.slow


async def open_tab(pilot, key: str) -> ClusterConsole:
    app = pilot.app
    assert isinstance(app, ClusterConsole)
    await wait_for(pilot, lambda: app.model.loaded.is_set())
    await pilot.press(key)
    await pilot.pause()
    return app


async def test_machines_show_ip_metadata_units_and_l_toggles_full_ids(
    cluster: demo.DemoCluster,
) -> None:
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_tab(pilot, "2")
        table = app.machines_pane.table
        await wait_for(pilot, lambda: len(table.view) == 3)
        by_ip = {row.cells[1]: row for row in table.view}
        assert set(by_ip) == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
        assert by_ip["127.0.0.1"].cells[2] == "disk=ssd,region=us-east"
        assert sum(int(row.cells[3]) for row in table.view) >= 8
        assert all(row.cells[0].endswith("…") and len(row.cells[0]) == 9 for row in table.view)
        await pilot.press("l")
        assert [row.cells[0] for row in table.view] == [row.key for row in table.view]
        await pilot.press("slash", *"us-west", "enter")
        assert {row.cells[1] for row in table.view} == {"127.0.0.2", "127.0.0.3"}
        await pilot.click(table, offset=(table.column_at(0) or 0, 0))
        assert table.sort_column == 0


async def test_enter_on_a_machine_shows_only_its_units(cluster: demo.DemoCluster) -> None:
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_tab(pilot, "2")
        table = app.machines_pane.table
        await wait_for(pilot, lambda: len(table.view) == 3)
        machine_id = table.cursor_row.key
        await pilot.press("enter")
        assert app.query_one("TabbedContent").active == "units"
        units = app.units_pane.table
        await wait_for(pilot, lambda: units.has_focus)
        assert units.view and all(r.cells[1].startswith(machine_id[:8]) for r in units.view)
        assert "on machine" in str(app.units_pane.status.render())
        await pilot.press("escape")
        assert len({r.cells[1] for r in units.view}) == 3


async def test_a_machine_that_stops_renewing_shows_as_gone_until_its_record_expires(
    cluster: demo.DemoCluster,
) -> None:
    client = make_client([cluster.url])
    lease = await client.lease(6)
    record = {"ID": "deadbeef" * 4, "PublicIP": "127.0.0.9", "Metadata": {"role": "ghost"}}
    key = f"/_coreos.com/fleet/machines/{'deadbeef' * 4}/object".encode()
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_tab(pilot, "2")
        table = app.machines_pane.table
        await client.put(key, json.dumps(record).encode(), lease=lease)

        def state() -> str | None:
            row = next((r for r in table.rows if r.cells[1] == "127.0.0.9"), None)
            return row.cells[4] if row else None

        await wait_for(pilot, lambda: state() == "alive")
        await wait_for(pilot, lambda: state() == "gone", within=8)
        assert "1 gone" in str(app.machines_pane.status.render())
        await wait_for(pilot, lambda: state() is None, within=10)
    await client.close()


def test_o_opens_a_local_shell_here_and_ssh_through_the_tunnel_host_elsewhere() -> None:
    here = Machine("a" * 32, "127.0.0.1", hostname=os.uname().nodename)
    assert MachineAccess().shell_argv(here) == [os.environ.get("SHELL") or "/bin/sh"]
    tunnel = Tunnel(TunnelSpec.parse("core@bastion:2222"), [])
    access = MachineAccess(tunnel=tunnel, identity="/keys/id", port=22)
    argv = access.shell_argv(here)
    assert argv[0] == "ssh" and argv[-3:] == ["-t", "--", "127.0.0.1"]
    assert ["-i", "/keys/id"] == argv[argv.index("-i") : argv.index("-i") + 2]
    hop = next(a for a in argv if a.startswith("ProxyCommand="))
    assert "-p 2222" in hop and "bastion" in hop and "-W %h:%p" in hop


async def test_subnets_show_the_config_free_capacity_reservations_and_expiry(
    cluster: demo.DemoCluster,
) -> None:
    client = make_client([cluster.url])
    reservation = b"/coreos.com/network/subnets/10.1.250.0-24"
    value = {"PublicIP": "10.0.0.250", "BackendType": "vxlan"}
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_tab(pilot, "4")
        table = app.subnets_pane.table
        await wait_for(pilot, lambda: len(table.rows) == 3 and all(
            r.cells[4].startswith("in 23h") for r in table.rows), within=10)  # fmt: skip
        status = str(app.subnets_pane.status.render())
        assert "Network 10.1.0.0/16" in status and "SubnetLen 24" in status
        assert "backend vxlan" in status and "252 of 255 free" in status
        await client.put(reservation, json.dumps(value).encode())
        await wait_for(pilot, lambda: any(r.cells[4] == "reserved" for r in table.rows))
        status = str(app.subnets_pane.status.render())
        assert "251 of 255 free" in status and "1 reserved" in status
        app.lease_timer.stop()
        first = next(r for r in table.rows if r.cells[4] != "reserved")
        subnet = app.model.subnets[first.key]
        assert subnet.expires_at is not None
        app.model.clock = lambda: subnet.expires_at - 95  # type: ignore[operator,assignment]
        app.subnets_pane.update_from_model()
        assert next(r for r in table.rows if r.key == first.key).cells[4] == "in 1m35s"
    await client.delete(reservation)
    await client.close()
