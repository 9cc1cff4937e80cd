"""Pilot tests of the units pane on a real demo cluster: its keys change real unit processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.widgets import Static

from clustertui.backend import demo
from clustertui.backend.fleet.registry import Registry
from clustertui.console.app import ClusterConsole
from clustertui.console.journal_stream import MachineAccess, read_journal
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.console.screens.text_view import TextScreen
from tests.panes.conftest import (
    console_on,
    open_units,
    registry_on,
    running,
    shown,
    unit_pid,
    units_running,
    wait_for,
)

pytestmark = pytest.mark.slow

TICKER = """\
[Unit]
Description=Ticks for the pane tests

[Service]
ExecStart=/bin/sh -c 'while true; do echo "tick %n"; sleep 1; done'
"""


async def launch(registry: Registry, cluster: demo.DemoCluster, names: list[str]) -> None:
    for name in names:
        await registry.create_job(name, TICKER, replace=True)
        await registry.set_target_state(name, "launched")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while units_running(cluster, names) != names:
        assert loop.time() < deadline, f"{names} never ran"
        await asyncio.sleep(0.1)


async def until_logged(registry: Registry, unit: str, text: str) -> None:
    """Wait until ``unit``'s journal on its machine holds ``text`` (read as the pane reads it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        job = await registry.job(unit)
        machines = await registry.machines()
        if job is not None and job.target in machines:
            lines = await read_journal(MachineAccess(), machines[job.target], [unit], "m")
            if any(text in entry.message for entry in lines):
                return
        assert loop.time() < deadline, f"{unit} never logged {text!r}"
        await asyncio.sleep(0.2)


async def put_cursor_on(app: ClusterConsole, pilot, name: str) -> None:
    table = app.units_pane.table
    await wait_for(pilot, lambda: table.move_to(name), within=15)


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def test_stopping_a_unit_from_the_table_stops_its_process_and_start_brings_it_back(
    cluster: demo.DemoCluster,
) -> None:
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["stop-start.service"])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "stop-start.service")
        await pilot.press("x")
        await wait_for(pilot, lambda: unit_pid(cluster, "stop-start.service") is None, within=15)
        row = next(r for r in app.units_pane.table.view if r.key == "stop-start.service")
        await wait_for(pilot, lambda: "stop-start.service" not in app.units_pane.memory.pending)
        row = next(r for r in app.units_pane.table.view if r.key == "stop-start.service")
        assert row.cells[2:4] == ("loaded", "loaded")
        await pilot.press("s")
        await wait_for(pilot, lambda: unit_pid(cluster, "stop-start.service") is not None, 15)
        await wait_for(pilot, lambda: "stop-start.service" not in app.units_pane.memory.pending)
        row = next(r for r in app.units_pane.table.view if r.key == "stop-start.service")
        assert row.cells[2:5] == ("launched", "launched", "active")
    await registry.client.close()


async def test_a_desired_state_shows_pending_until_it_arrives(cluster: demo.DemoCluster) -> None:
    registry = registry_on(cluster.url)
    slow = TICKER + "ExecStop=/bin/sleep 2\n"
    await registry.create_job("pending.service", slow)
    await registry.set_target_state("pending.service", "launched")
    await launch(registry, cluster, [])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "pending.service")
        await wait_for(pilot, lambda: app.units_pane.table.cursor_row.cells[3] == "launched", 20)
        await pilot.press("x")
        await wait_for(pilot, lambda: "pending → loaded" in app.units_pane.table.cursor_row.cells)
        await wait_for(pilot, lambda: app.units_pane.table.cursor_row.cells[3] == "loaded", 15)
    await registry.destroy("pending.service")
    await registry.client.close()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_unit_that_cannot_be_placed_is_said_not_to_converge(
    cluster: demo.DemoCluster,
) -> None:
    registry = registry_on(cluster.url)
    nowhere = TICKER + "\n[X-Fleet]\nMachineMetadata=region=mars\n"
    await registry.create_job("nowhere.service", nowhere)
    clock = Clock()
    app = console_on(cluster.url, clock=clock)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "nowhere.service")
        await pilot.press("s")
        await wait_for(pilot, lambda: "pending → launched" in app.units_pane.table.cursor_row.cells)
        clock.now += app.units_pane.converge_seconds + 1
        await wait_for(
            pilot,
            lambda: app.units_pane.table.cursor_row.cells[3] == "inactive, did not reach launched",
        )
        assert "did not converge: nowhere.service" in str(app.units_pane.status.render())
    await registry.destroy("nowhere.service")
    await registry.client.close()


async def test_restart_gives_the_unit_a_new_process(cluster: demo.DemoCluster) -> None:
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["restart.service"])
    before = unit_pid(cluster, "restart.service")
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "restart.service")
        await pilot.press("R")
        await wait_for(
            pilot, lambda: unit_pid(cluster, "restart.service") not in (None, before), within=30
        )
    await registry.destroy("restart.service")
    await registry.client.close()


async def test_unload_and_load_move_the_unit_between_inactive_and_loaded(
    cluster: demo.DemoCluster,
) -> None:
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["unload.service"])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "unload.service")
        await pilot.press("U")
        await wait_for(pilot, lambda: unit_pid(cluster, "unload.service") is None, within=15)
        row = app.units_pane.table
        await wait_for(pilot, lambda: row.cursor_row.cells[2:4] == ("inactive", "inactive"), 15)
        await pilot.press("L")
        await wait_for(pilot, lambda: row.cursor_row.cells[2:4] == ("loaded", "loaded"), 15)
        assert unit_pid(cluster, "unload.service") is None
    await registry.destroy("unload.service")
    await registry.client.close()


async def test_destroy_asks_first_then_removes_the_unit(cluster: demo.DemoCluster) -> None:
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["doomed.service"])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "doomed.service")
        await pilot.press("D")
        await wait_for(pilot, lambda: shown(app, ConfirmScreen, "#confirm-question"))
        assert "doomed.service" in text_of(app.screen, "#confirm-question")
        await pilot.press("y")
        await wait_for(pilot, lambda: unit_pid(cluster, "doomed.service") is None, within=15)
        await wait_for(
            pilot, lambda: all(r.key != "doomed.service" for r in app.units_pane.table.rows)
        )
    assert await registry.job("doomed.service") is None
    await registry.client.close()


async def test_marking_three_units_and_stopping_them_stops_all_three(
    cluster: demo.DemoCluster,
) -> None:
    registry = registry_on(cluster.url)
    names = ["mark-a.service", "mark-b.service", "mark-c.service"]
    await launch(registry, cluster, names)
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, names[0])
        # Space marks the row and stays on it (issue 13): down moves on.
        await pilot.press("space", "down", "space", "down", "space")
        assert app.units_pane.table.marked == set(names)
        assert app.units_pane.table.cursor_row.key == names[2]
        assert app.cluster_header.units == "3 marked"
        await pilot.press("x")
        await wait_for(pilot, lambda: shown(app, ConfirmScreen, "#confirm-question"))
        question = text_of(app.screen, "#confirm-question")
        assert all(name in question for name in names) and "3 units" in question
        await pilot.press("y")
        await wait_for(pilot, lambda: units_running(cluster, names) == [], within=20)
        assert not app.units_pane.table.marked
    for name in names:
        await registry.destroy(name)
    await registry.client.close()


async def test_submit_takes_a_unit_file_and_shows_errors_with_line_numbers(
    cluster: demo.DemoCluster, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nthis line has no equals sign\n")
    good = tmp_path / "submitted.service"
    good.write_text(TICKER)
    registry = registry_on(cluster.url)
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: shown(app, PathPromptScreen, "#prompt-input"))
        await pilot.press(*str(bad), "enter")
        await wait_for(pilot, lambda: "line 3" in text_of(app.screen, "#prompt-error"))
        assert isinstance(app.screen, PathPromptScreen)
        app.screen.query_one("#prompt-input").value = str(good)
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: any(r.key == "submitted.service" for r in app.units_pane.table.rows)
        )
    job = await registry.job("submitted.service")
    assert job is not None and job.unit is not None and "tick" in job.unit.raw
    await registry.destroy("submitted.service")
    await registry.client.close()


async def test_cat_shows_the_unit_file_and_enter_its_status_with_journal_lines(
    cluster: demo.DemoCluster,
) -> None:
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["status.service"])
    await until_logged(registry, "status.service", "tick status.service")
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "status.service")
        await pilot.press("c")
        await wait_for(pilot, lambda: shown(app, TextScreen, "#text-body"))
        assert "ExecStart=/bin/sh -c" in text_of(app.screen, "#text-body")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: shown(app, TextScreen, "#text-body"), within=15)
        body = text_of(app.screen, "#text-body")
        assert "launched (desired launched)" in body and "active (running)" in body
        assert "Machine: " in body and "tick status.service" in body
    await registry.destroy("status.service")
    await registry.client.close()


async def test_j_follows_the_units_journal_and_read_only_hides_every_write(
    cluster: demo.DemoCluster,
) -> None:
    app = console_on(cluster.url, read_only=True)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "hello.service")
        for key in ("s", "x", "D", "a"):
            await pilot.press(key)
        await pilot.pause()
        assert app.screen is app.screen_stack[0]
        assert not app.units_pane.memory.pending
        sections = {row[3] for row in app.help_rows()}
        assert "units.start" not in sections and "units.journal" in sections
        await pilot.press("j")
        view = app.journal_pane.view
        await wait_for(pilot, lambda: any("Hello from" in e.message for e in view.buffered), 15)
        assert {e.unit for e in view.buffered} == {"hello.service"}
        assert app.query_one("TabbedContent").active == "journal"


async def test_filter_and_sort_the_units_table(cluster: demo.DemoCluster) -> None:
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        table = app.units_pane.table
        await wait_for(pilot, lambda: any(r.key == "web@8081.service" for r in table.rows), 15)
        await pilot.press("slash", *"web@", "enter")
        assert [r.cells[0] for r in table.view] == ["web@8080.service", "web@8081.service"]
        await pilot.press("greater_than_sign")
        assert table.sort_column == 0
        await pilot.press("equals_sign")
        assert [r.cells[0] for r in table.view] == ["web@8081.service", "web@8080.service"]
        await pilot.click(table, offset=(2, 0))
        assert table.sort_column == 0 and not table.sort_reverse
