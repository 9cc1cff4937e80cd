"""The cluster panes across a store restart: they say the store is gone, then resume the watch."""

from __future__ import annotations

import asyncio
import json

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from tests.harness.etcd import EtcdMember
from tests.panes.conftest import console_on, running, wait_for

UNIT = "[Service]\nExecStart=/bin/true\n"


async def test_a_store_restart_shows_unreachable_then_the_watch_resumes(
    fresh_etcd: EtcdMember,
) -> None:
    client = make_client([fresh_etcd.url])
    await client.wait_ready()
    registry = Registry(client)
    await registry.create_job("before.service", UNIT)
    app = console_on(fresh_etcd.url)
    async with running(app) as pilot:
        await wait_for(pilot, lambda: app.model.loaded.is_set())
        await pilot.press("3")
        table = app.units_pane.table
        await wait_for(pilot, lambda: [r.key for r in table.rows] == ["before.service"])
        await asyncio.to_thread(fresh_etcd.stop)
        status = app.units_pane.status
        await wait_for(pilot, lambda: "store unreachable" in str(status.render()), within=15)
        assert [r.key for r in table.rows] == ["before.service"]
        await asyncio.to_thread(lambda: fresh_etcd.start().wait_ready())
        await registry.create_job("after.service", UNIT)
        await client.put(
            b"/coreos.com/network/config", json.dumps({"Network": "10.5.0.0/16"}).encode()
        )
        await wait_for(pilot, lambda: len(table.rows) == 2, within=20)
        await wait_for(pilot, lambda: "store unreachable" not in str(status.render()), within=5)
        # The network config was written after the job: its event may come a moment later.
        await wait_for(
            pilot,
            lambda: (
                app.model.network is not None and str(app.model.network.network) == "10.5.0.0/16"
            ),
            within=5,
        )
    await client.close()
