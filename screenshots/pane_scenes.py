"""Provides the cluster pane scenes: fixed machines, units, subnets and journal; a still clock."""

from __future__ import annotations

import json
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.console.screens.text_view import TextScreen
from clustertui.console.screens.units import append_journal, status_lines
from clustertui.console.session import Session
from clustertui.widgets.journal_view import JournalEntry
from clustertui.widgets.literal import literal
from screenshots.driving import console_of, wait_for
from screenshots.scenes import SHOWN_ENDPOINT, THEME, Scene

NOW = 1_795_000_000.0
"""The still clock of every pane scene (2026-11-18)."""
PREFIX = "/_coreos.com/fleet/"
MACHINES = {
    "8a3d1b2c9f0e4d6a8b7c6d5e4f3a2b1c": ("172.17.8.101", {"region": "us-east", "disk": "ssd"}),
    "c41f7e09aa5b4c3d9e8f7a6b5c4d3e2f": ("172.17.8.102", {"region": "us-west", "disk": "hdd"}),
    "f0e1d2c3b4a5968778695a4b3c2d1e0f": ("172.17.8.103", {"region": "us-west", "disk": "ssd"}),
}
M1, M2, M3 = MACHINES
UNITS = {
    "hello.service": ("[Unit]\nDescription=Says hello every second\n\n[Service]\n"
                      "ExecStart=/bin/sh -c 'while true; do echo hello; sleep 1; done'\n"),
    "monitor.service": ("[Unit]\nDescription=Reports the load average\n\n[Service]\n"
                        "ExecStart=/usr/bin/uptime\n\n[X-Fleet]\nGlobal=true\n"),
    "web@8080.service": "[Service]\nExecStart=/usr/bin/web --port 8080\n",
    "web@8081.service": "[Service]\nExecStart=/usr/bin/web --port 8081\n",
    "flaky.service": "[Service]\nExecStart=/bin/false\nRestart=always\n",
    "ssd-cache.service": ("[Service]\nExecStart=/usr/bin/cache\n\n[X-Fleet]\n"
                          "MachineMetadata=disk=ssd\n"),
}  # fmt: skip
PLACEMENT = {
    "hello.service": ("launched", M1, ("active", "running")),
    "web@8080.service": ("launched", M2, ("active", "running")),
    "web@8081.service": ("launched", M3, ("activating", "start-pre")),
    "flaky.service": ("launched", M2, ("failed", "failed")),
    "ssd-cache.service": ("loaded", M3, ("inactive", "dead")),
}
SUBNETS = {"10.1.15.0-24": M1, "10.1.16.0-24": M2, "10.1.72.0-24": M3}
EXPIRES_IN = {"10.1.15.0-24": 86_190.0, "10.1.16.0-24": 43_512.0, "10.1.72.0-24": 245.0}
RESERVED = "10.1.200.0-24"
BAD_UNIT = Path("/tmp/clustertui-scenes/bad.service")


async def seed_cluster(url: str) -> None:
    """Write fixed fleet and flannel keys: three machines, six units, four subnets."""
    client = make_client([url])
    registry = Registry(client, PREFIX)
    try:
        await client.wait_ready()
        for machine_id, (ip, metadata) in MACHINES.items():
            record = {"ID": machine_id, "PublicIP": ip, "Metadata": metadata,
                      "Hostname": f"core-{ip[-1]}"}  # fmt: skip
            await client.put(
                registry.key("machines", machine_id, "object"), json.dumps(record).encode()
            )
        await client.put(registry.leader_key, json.dumps(M1).encode())
        for name, raw in UNITS.items():
            await registry.create_job(name, raw, replace=True)
        for name, (target_state, machine_id, (active, sub)) in PLACEMENT.items():
            await registry.set_target_state(name, target_state)
            await client.put(registry.key("job", name, "target"), json.dumps(machine_id).encode())
            state = {"loadState": "loaded", "activeState": active, "subState": sub}
            await client.put(registry.key("states", name, machine_id), json.dumps(state).encode())
        await registry.set_target_state("monitor.service", "launched")
        for machine_id in MACHINES:
            state = {"loadState": "loaded", "activeState": "active", "subState": "running"}
            await client.put(
                registry.key("states", "monitor.service", machine_id), json.dumps(state).encode()
            )
        config = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}
        await client.put(b"/coreos.com/network/config", json.dumps(config).encode())
        for subnet, machine_id in SUBNETS.items():
            lease = await client.lease(86_400)
            value = {"PublicIP": MACHINES[machine_id][0], "BackendType": "vxlan",
                     "BackendData": {"MachineID": machine_id}}  # fmt: skip
            await client.put(
                f"/coreos.com/network/subnets/{subnet}".encode(), json.dumps(value).encode(),
                lease=lease,
            )  # fmt: skip
        reserved = {"PublicIP": "172.17.8.200", "BackendType": "vxlan"}
        await client.put(
            f"/coreos.com/network/subnets/{RESERVED}".encode(), json.dumps(reserved).encode()
        )
    finally:
        await client.close()


def pane_console(url: str) -> ClusterConsole:
    session = Session(ClusterSettings(name="demo", endpoints=(url,)))
    return ClusterConsole(session, cluster_name="demo", theme=THEME, clock=lambda: NOW)


async def settle(pilot: Pilot, tab: str) -> ClusterConsole:
    """Load the panes, stop everything that moves, pin the subnet expiries, show ``tab``."""
    app = console_of(pilot)
    app.cluster_header.endpoint = SHOWN_ENDPOINT
    await wait_for(pilot, lambda: len(app.units_pane.table.rows) == 8)
    await wait_for(pilot, lambda: app.cluster_header.state == "connected")
    app.workers.cancel_group(app, "store-status")
    app.lease_timer.stop()
    for name, seconds in EXPIRES_IN.items():
        app.model.subnets[name].expires_at = NOW + seconds
    app.cluster_header.revision = app.model.revision
    for pane in app.table_panes:
        pane.update_from_model()
    # The journal scenes show canned lines: no reader is started on the fixed machines.
    app.journal_pane.title = "(canned)"
    await pilot.press(tab)
    await pilot.pause()
    return app


async def machines(pilot: Pilot) -> None:
    await settle(pilot, "2")


async def units(pilot: Pilot) -> None:
    app = await settle(pilot, "3")
    app.units_pane.table.move_to("hello.service")
    await pilot.press("space", "space")
    await pilot.pause()


async def subnets(pilot: Pilot) -> None:
    await settle(pilot, "4")


def journal_lines() -> list[JournalEntry]:
    texts = [
        (6, M1, "hello.service", "Hello from core-1 at 10:13:20"),
        (6, M2, "web@8080.service", "listening on port 8080"),
        (6, M1, "hello.service", "Hello from core-1 at 10:13:21"),
        (4, M2, "flaky.service", "retrying in 3s"),
        (3, M2, "flaky.service", "something broke: exit status 1"),
        (6, M2, "web@8080.service", "GET / 200"),
        (5, M3, "web@8081.service", "preparing web 8081"),
        (6, M1, "hello.service", "Hello from core-1 at 10:13:22"),
        (7, M3, "ssd-cache.service", "cache hit ratio 0.93 [bold]not markup[/bold]"),
        (6, M1, "hello.service", "Hello from core-1 at 10:13:23"),
    ]
    return [
        JournalEntry(int((NOW + n) * 1_000_000), priority, machine[:8] + "…", unit, message)
        for n, (priority, machine, unit, message) in enumerate(texts)
    ]


async def journal(pilot: Pilot) -> None:
    app = await settle(pilot, "5")
    pane = app.journal_pane
    pane.title = "the whole cluster: 3 machines"
    pane.whole_cluster = True
    pane.receive(journal_lines())
    await wait_for(pilot, lambda: pane.view.total == 10)
    await pilot.press("slash", *"hello", "enter")
    await pilot.pause()


async def unit_status(pilot: Pilot) -> None:
    app = await settle(pilot, "3")
    fleet = app.model.fleet
    job = fleet.jobs["hello.service"]
    body = status_lines(job, fleet.states["hello.service"], M1, app.model)
    append_journal(body, [e for e in journal_lines() if e.unit == "hello.service"])
    app.push_screen(TextScreen(literal("hello.service", "bold"), body))
    await wait_for(pilot, lambda: isinstance(app.screen, TextScreen))
    await pilot.pause()


async def unit_file(pilot: Pilot) -> None:
    app = await settle(pilot, "3")
    app.units_pane.table.move_to("hello.service")
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(app.screen, TextScreen))
    await pilot.pause()


async def stop_confirmation(pilot: Pilot) -> None:
    app = await settle(pilot, "3")
    app.units_pane.table.move_to("flaky.service")
    await pilot.press("space", "down", "space", "down", "space", "x")
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    await pilot.pause()


def write_bad_unit() -> None:
    BAD_UNIT.parent.mkdir(parents=True, exist_ok=True)
    BAD_UNIT.write_text("[Service]\nExecStart=/bin/true\nRestart always\n")


async def submit_error(pilot: Pilot) -> None:
    write_bad_unit()
    app = await settle(pilot, "3")
    await pilot.press("a")
    await wait_for(pilot, lambda: isinstance(app.screen, PathPromptScreen))
    await pilot.press(*str(BAD_UNIT), "enter")
    await wait_for(pilot, lambda: "line 3" in str(app.screen.query_one("#prompt-error").render()))
    await pilot.pause()


async def save_journal(pilot: Pilot) -> None:
    app = await settle(pilot, "5")
    pane = app.journal_pane
    pane.title = "machine 8a3d1b2c…"
    pane.receive(journal_lines())
    await wait_for(pilot, lambda: pane.view.total == 10)
    await pilot.press("S")
    await wait_for(pilot, lambda: isinstance(app.screen, PathPromptScreen))
    field = app.screen.query_one("#prompt-input", Input)
    # A blinking cursor would be drawn or not depending on when the picture is taken.
    field.cursor_blink = False
    field.value = "journal-core-1.log"
    await pilot.pause()


PANE_SCENES = [
    Scene("machines-pane", machines),
    Scene("units-pane", units),
    Scene("subnets-pane", subnets),
    Scene("journal-pane", journal),
    Scene("unit-status", unit_status),
    Scene("unit-file", unit_file),
    Scene("stop-confirmation", stop_confirmation),
    Scene("submit-error", submit_error),
    Scene("save-journal", save_journal),
    Scene("units-80x24", units, size=(80, 24)),
    Scene("unit-status-80x24", unit_status, size=(80, 24)),
]
