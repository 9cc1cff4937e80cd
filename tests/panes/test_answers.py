"""Issue 13 on the cluster panes: unit actions answer, the palette acts only on what is seen."""

from __future__ import annotations

from typing import Any

import pytest

from clustertui.backend import demo
from clustertui.console.app import ClusterConsole
from tests.panes.conftest import console_on, open_units, registry_on, running, wait_for
from tests.panes.test_units import launch, put_cursor_on

pytestmark = pytest.mark.slow


def recorded(app: ClusterConsole) -> list[str]:
    said: list[str] = []
    notify = app.notify

    def record(message: str, **kwargs: Any) -> None:
        said.append(message)
        notify(message, **kwargs)

    app.notify = record  # type: ignore[method-assign]
    return said


def titles(app: ClusterConsole) -> list[str]:
    return [command.title for command in app.get_system_commands(app.screen)]


async def test_restart_stop_and_start_say_what_they_did_to_which_unit_where(
    cluster: demo.DemoCluster,
) -> None:
    """#13.9: R, x and s answer: what was asked of which unit on which machine, then the
    result once the agent reports it."""
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["answer.service"])
    app = console_on(cluster.url)
    said = recorded(app)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "answer.service")
        await pilot.press("R")
        await wait_for(pilot, lambda: any("restarted on machine" in n for n in said), 30)
        lines = [n for n in said if "answer.service" in n]
        assert lines[0].startswith("restarting answer.service on machine ")
        assert any(n.startswith("answer.service stopped on machine ") for n in lines)
        assert lines[-1].startswith("answer.service restarted on machine ")
        await pilot.press("x")
        await wait_for(pilot, lambda: said[-1].startswith("answer.service stopped on machine"), 20)
        assert "stopping answer.service on machine " in " ".join(said)
    await registry.destroy("answer.service")
    await registry.client.close()


async def test_the_palette_offers_only_the_pane_on_view_and_names_the_target(
    cluster: demo.DemoCluster,
) -> None:
    """#13.8: from Subnets, no unit command is offered; in Units, Stop names its unit."""
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["palette.service"])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, "palette.service")
        assert "Units: Stop palette.service" in titles(app)
        await pilot.press("4")
        await pilot.pause(0.2)
        assert not [t for t in titles(app) if t.startswith(("Units:", "Keys:", "Machines:"))]
        assert "Show Units" in titles(app)
    await registry.destroy("palette.service")
    await registry.client.close()


async def test_the_journal_pane_opens_on_the_whole_cluster_and_j_narrows(
    cluster: demo.DemoCluster,
) -> None:
    """#13.10: `5` with nothing chosen follows every machine, merged by time."""
    registry = registry_on(cluster.url)
    await launch(registry, cluster, ["narrow.service"])
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await wait_for(pilot, lambda: app.model.loaded.is_set())
        await wait_for(pilot, lambda: len(app.model.fleet.machines) == 3)
        await pilot.press("5")
        journal = app.journal_pane
        await wait_for(pilot, lambda: journal.whole_cluster)
        assert sorted(f.machine.id for f in journal.followers) == sorted(app.model.fleet.machines)
        assert journal.title == "the whole cluster: 3 machines"
        await wait_for(pilot, lambda: journal.view.count > 0, 20)
        await open_units(pilot)
        await put_cursor_on(app, pilot, "narrow.service")
        await pilot.press("j")
        await wait_for(pilot, lambda: not journal.whole_cluster)
        assert len(journal.followers) == 1
        assert journal.title.startswith("narrow.service on ")
    await registry.destroy("narrow.service")
    await registry.client.close()


async def test_marks_show_in_a_column_and_a_filtered_table_counts_what_it_shows(
    cluster: demo.DemoCluster,
) -> None:
    """Marks are visible (✓ column, header count); the status counts the filtered view."""
    registry = registry_on(cluster.url)
    names = ["count-a.service", "count-b.service"]
    await launch(registry, cluster, names)
    app = console_on(cluster.url)
    async with running(app) as pilot:
        await open_units(pilot)
        await put_cursor_on(app, pilot, names[0])
        await pilot.press("space")
        table = app.units_pane.table
        assert table.cursor_row.key == names[0]
        first = table.render_line(1 + table.cursor - int(table.scroll_y)).text
        assert first.startswith("✓ count-a.service")
        assert app.cluster_header.units == "1 marked"
        total = len({name for name in app.model.fleet.jobs if app.model.fleet.jobs[name].unit_hash})
        await pilot.press("slash", *"count-")
        await wait_for(pilot, lambda: len(table.view) == 2)
        status = str(app.units_pane.status.render())
        assert status.startswith(f"2 of {total} units shown (filter)"), status
    for name in names:
        await registry.destroy(name)
    await registry.client.close()
