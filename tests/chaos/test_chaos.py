"""Chaos on a real 3-member etcd and on the bundled store: faults one at a time and overlapping.

The seed is printed (and taken from $CHAOS_SEED when set) so a failing run can be replayed.
A headless console (Textual pilot) watches the whole run; after each fault its Units pane must
equal a fresh read of the store within 2 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.screens.units import short_id
from clustertui.console.session import Session
from tests.chaos.world import GLOBAL, PREFIX, SETTLE, UNITS, World
from tests.panes.conftest import running

pytestmark = pytest.mark.slow
FAULTS = int(os.environ.get("CHAOS_FAULTS", "8"))
PANE_WITHIN = float(os.environ.get("CHAOS_PANE_WITHIN", "2"))


def pane_rows(app: ClusterConsole) -> dict[str, tuple[str, str]]:
    """What the Units pane shows: row key -> (machine, active state)."""
    return {
        row.key: (row.cells[1].split("/")[0], row.cells[4]) for row in app.units_pane.table.rows
    }


async def store_rows(registry: Registry) -> dict[str, tuple[str, str]]:
    """The same, from a fresh read of the store."""
    state = await registry.snapshot(("job", "unit", "machines", "states"))
    rows: dict[str, tuple[str, str]] = {}
    for name, job in state.jobs.items():
        reports = state.states.get(name, {})
        if name in GLOBAL:
            for machine_id, report in reports.items():
                rows[f"{name}\0{machine_id}"] = (short_id(machine_id), report.active_state)
            if not reports:
                rows[f"{name}\0"] = ("-", "-")
        else:
            reported = reports.get(job.target) if job.target else None
            where = short_id(job.target) if job.target else "-"
            rows[name] = (where, reported.active_state if reported else "-")
    return rows


async def pane_matches(app: ClusterConsole, registry: Registry) -> str:
    """'' once the pane equals a fresh read (within PANE_WITHIN s), else the difference."""
    deadline = time.monotonic() + PANE_WITHIN
    while True:
        expected = await store_rows(registry)
        shown = pane_rows(app)
        if shown == expected:
            return ""
        if time.monotonic() > deadline:
            differ = {
                key: (shown.get(key), expected.get(key))
                for key in set(shown) | set(expected)
                if shown.get(key) != expected.get(key)
            }
            revision = (await registry.snapshot(("lease",))).revision
            return (
                f"the Units pane differs from the store after {PANE_WITHIN:g}s: {differ} "
                f"(pane at revision {app.model.revision}, store at {revision})"
            )
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("store_kind", ["etcd", "bundled"])
async def test_no_unit_runs_twice_and_every_unit_comes_back(
    store_kind: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 31))
    print(f"\nchaos seed {seed} (CHAOS_SEED={seed} to replay) on {store_kind}", flush=True)
    world = World(tmp_path, store_kind, seed)
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.to_thread(world.start)
        missing = await asyncio.to_thread(world.check_all_running, 30)
        assert not missing, f"seed {seed}: never started: {missing}"
        registry = Registry(make_client(world.urls), PREFIX)
        session = Session(ClusterSettings(name="chaos", endpoints=tuple(world.urls)))
        app = ClusterConsole(session, cluster_name="chaos", read_only=True)
        async with running(app) as pilot:
            await pilot.press("3")

            def after_heal() -> str:
                # Any difference fails the run, on both stores.
                check = asyncio.run_coroutine_threadsafe(pane_matches(app, registry), loop)
                return check.result(timeout=60)

            first = await pane_matches(app, registry)
            assert not first, first
            await asyncio.to_thread(world.run_faults, FAULTS, 3, after_heal)
        await registry.client.close()
        await asyncio.to_thread(world.check_acked)
    finally:
        await asyncio.to_thread(world.stop)
    report = world.report
    print(report.summary(), f"in {time.monotonic() - began:.0f}s", flush=True)
    assert len(report.faults) == FAULTS
    assert report.checks > 100 * len(UNITS)
    assert report.acked > 0
    assert not report.violations, f"seed {seed}: {report.violations}"
    assert all(report.longest_down.get(u, 0.0) < SETTLE + 10 for u in GLOBAL)
