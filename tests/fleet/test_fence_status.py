"""A unit stopped by a fence says so: in `clusterctl status` and in the console's Units pane."""

from __future__ import annotations

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Machine, Registry, UnitState
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.session import Session
from tests.ctl.conftest import CtlRunner
from tests.harness.stores import RunningStore
from tests.panes.conftest import running, wait_for

MACHINE = "fe0ced00fe0ced00fe0ced00fe0ced00"
NOTE = "fenced: lost the store at 12:34:56"


async def fenced_unit(kv: EtcdClient) -> Registry:
    registry = Registry(kv, DEFAULT_PREFIX)
    lease = await kv.lease(60)
    await registry.register_machine(Machine(MACHINE, "127.0.0.1"), lease.id)
    await registry.create_job("svc.service", "[Service]\nExecStart=/bin/sleep 60\n")
    await registry.set_target_state("svc.service", "launched")
    await registry.txn([], [registry.put_op(registry.key("job", "svc.service", "target"), MACHINE)])
    state = UnitState("loaded", "inactive", "dead", machine_id=MACHINE)
    state.machine_state["Fenced"] = "lost the store at 12:34:56"
    await registry.publish_state("svc.service", state, lease.id)
    return registry


async def test_status_and_the_units_pane_say_when_the_unit_was_fenced(
    fresh_store: RunningStore, fresh_kv: EtcdClient
) -> None:
    await fenced_unit(fresh_kv)
    status = await CtlRunner(fresh_store.url, DEFAULT_PREFIX)("status", "svc")
    assert f"   {NOTE}" in status.out.splitlines(), status.out

    session = Session(ClusterSettings(name="t", endpoints=(fresh_store.url,)))
    app = ClusterConsole(session, cluster_name="t", read_only=True)
    async with running(app) as pilot:
        await pilot.press("3")

        def shown() -> bool:
            rows = {row.key: row.cells for row in app.units_pane.table.rows}
            return "svc.service" in rows and rows["svc.service"][5] == NOTE

        await wait_for(pilot, shown)
