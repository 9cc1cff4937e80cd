"""Injection through the console: escapes in unit states and an option-like PublicIP, shown
literally in the panes (Textual pilot) and in a real terminal (tmux), never obeyed."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Machine, Registry, UnitState
from clustertui.backend.fleet.unitfile import unit_hash
from clustertui.console.app import ClusterConsole
from clustertui.console.screens.edit_value import EditValueScreen
from clustertui.widgets.value_view import ValueView
from screenshots.driving import loaded, select
from tests.console.conftest import SIZE, console_for
from tests.console.test_tmux import Terminal
from tests.harness.etcd import EtcdMember
from tests.harness.stores import RunningStore
from tests.panes.conftest import console_on, running, wait_for

BAD = "badc0ffee0ddf00d0123456789abcdef"
GOOD = "600d600d600d600d600d600d600d600d"
PWNED = "\x1b]0;PWNED\x07"
SUB = "\x1b[2J\x1b[31mred\x9b\u202e"
UNIT = "[Unit]\nDescription=evil \x1b]0;DESC\x07\n[Service]\nExecStart=/bin/sleep 60\n"
SHOWN_ACTIVE = "\\x1b]0;PWNED\\a"
SHOWN_SUB = "\\x1b[2J\\x1b[31mred\\x9b\\u202e"


async def seed(url: str, pwned: Path, *, bad: bool = True) -> None:
    """Under fleet's default prefix (the console's): a bad machine, units with escapes."""
    client = make_client([url])
    registry = Registry(client, DEFAULT_PREFIX)
    try:
        option = f"-oProxyCommand=touch {pwned}"
        if bad:
            await registry.register_machine(Machine(BAD, option, {"role": "evil"}, "far-1"), 0)
        await registry.register_machine(Machine(GOOD, "127.0.0.9", {}, "far-2"), 0)
        for name, target in (("evil.service", BAD), ("ok.service", GOOD))[not bad :]:
            await registry.create_job(name, UNIT)
            await registry.set_target_state(name, "launched")
            await registry.txn([], [registry.put_op(registry.key("job", name, "target"), target)])
            state = UnitState("loaded", PWNED, SUB, unit_hash(UNIT), target)
            await registry.publish_state(name, state, 0)
        key = registry.key("job", "ok.service", "reason")
        await registry.txn([], [registry.put_op(key, "placed \x1b]0;REASON\x07")])
    finally:
        await client.close()


def screen_text(app: ClusterConsole) -> str:
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


async def test_the_panes_show_escapes_and_invalid_machines_literally(
    fresh_store: RunningStore, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    await seed(fresh_store.url, pwned)
    app = console_on(fresh_store.url)
    async with running(app) as pilot:
        await wait_for(pilot, lambda: app.model.loaded.is_set())
        await pilot.press("3")
        table = app.units_pane.table
        await wait_for(pilot, lambda: len(table.rows) == 2)
        await pilot.pause()
        evil = next(row for row in table.rows if row.key == "evil.service")
        assert evil.cells[1:] == ("badc0ffe…/invalid", "launched", "launched", SHOWN_ACTIVE,
                                  SHOWN_SUB)  # fmt: skip
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
        assert "\u202e" not in text
        assert SHOWN_ACTIVE in text and "badc0ffe…/invalid" in text
        # The status dialog: the state, the reason the engine gave, the invalid machine.
        assert table.move_to("evil.service")
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "TextScreen", within=20)
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text
        assert "invalid: PublicIP is not an IP address" in text
        assert "Description=evil" not in text and "evil \\x1b]0;DESC\\a" in text
        await pilot.press("escape")
        await pilot.press("2")
        machines = app.machines_pane.table
        await wait_for(pilot, lambda: len(machines.rows) == 2)
        await pilot.pause()
        bad = next(row for row in machines.rows if row.key == BAD)
        assert bad.cells[4] == "invalid: PublicIP is not an IP address"
        text = screen_text(app)
        assert "invalid: PublicIP is not an IP address" in text and "\x1b" not in text
        # `o` on the invalid machine: refused, no ssh.
        assert machines.move_to(BAD)
        await pilot.press("o")
        await pilot.pause(0.5)
        assert any("Refused" in n.title for n in app._notifications), app._notifications
    assert not pwned.exists()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.kill()


@pytest.mark.slow
def test_a_unit_state_that_sets_the_title_does_not_reach_the_terminal(
    fresh_etcd: EtcdMember, terminal: Terminal, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    # The unit sits on a valid machine: its row is short, the ACTIVE column on screen.
    asyncio.run(seed(fresh_etcd.url, pwned, bad=False))
    terminal.run("set-option", "-g", "allow-rename", "on")
    terminal.start([sys.executable, "-m", "clustertui.console.app", "--endpoints", fresh_etcd.url])
    terminal.wait_for("connected", within=60)
    title_before = terminal.run("display", "-p", "-t", "main", "#{pane_title}").strip()
    terminal.keys("3")

    def title() -> str:
        return terminal.run("display", "-p", "-t", "main", "#{pane_title}").strip()

    # Until the row shows, or the title changes (what an obeyed OSC 0 does).
    deadline = time.monotonic() + 20
    screen = terminal.screen()
    while time.monotonic() < deadline and SHOWN_ACTIVE not in screen and title() == title_before:
        time.sleep(0.1)
        screen = terminal.screen()
    time.sleep(0.5)
    assert "PWNED" not in title() and title() == title_before, title()
    assert not re.search(r"PWNED|REASON|DESC", terminal.run("display", "-p", "#{window_name}"))
    # The first column is the mark (blank, or ✓ when marked).
    row = next(line for line in screen.splitlines() if line.lstrip(" ✓").startswith("ok.service"))
    assert "600d600d…/127.0.0.9" in row and SHOWN_ACTIVE in row, screen
    terminal.keys("q")
    terminal.wait_for("EXITED 0", within=60)
    assert not pwned.exists()


async def test_a_value_with_escape_sequences_is_not_opened_in_the_raw_editor(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    key = ns + b"evil"
    await kv.put(key, b"[bold]title[/bold] \x1b]0;PWNED\x07 \x1b[2J")
    app = console_for(store.url, ns)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, key)
        view = app.query_one(ValueView)
        await wait_for(pilot, lambda: view.entry is not None)
        await pilot.press("e")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, EditValueScreen)
        assert any("cannot be edited" in n.message for n in app._notifications)
        text = screen_text(app)
        assert "\x1b" not in text and "\x9b" not in text, text
        assert "\\x1b]0;PWNED\\a" in text, [line for line in text.splitlines() if "PWNED" in line]
