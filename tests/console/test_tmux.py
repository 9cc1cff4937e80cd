"""Drives `clustertui --demo` in a real terminal (tmux) the way a person would."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.procs import REPO, find_tool, port_open


class Terminal:
    """A tmux server of the test's own with one 120x36 window."""

    def __init__(self) -> None:
        self.tmux = find_tool("tmux")
        self.socket = f"clustertui-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout

    def start(self, command: list[str], size: tuple[int, int] = (120, 36)) -> None:
        shell = f"cd {shlex.quote(str(REPO))} && {shlex.join(command)}; echo EXITED $?; sleep 60"
        width, height = (str(n) for n in size)
        self.run("new-session", "-d", "-x", width, "-y", height, "-s", "main", shell)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "main", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def wait_for(self, text: str, within: float = 30.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen shows:\n{self.screen()}")

    def wait_gone(self, text: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if text not in self.screen():
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never went away; the screen shows:\n{self.screen()}")

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.kill()


def unit_row(screen: str, unit: str) -> str:
    """The row of ``unit``, without the mark column (✓ or blank) before it."""
    rows = (line.lstrip(" ✓") for line in screen.splitlines())
    return next((row for row in rows if row.startswith(unit)), "")


def wait_for_row(terminal: Terminal, unit: str, *words: str, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        row = unit_row(terminal.screen(), unit)
        if row.split()[2:][: len(words)] == list(words):
            return row
        time.sleep(0.1)
    raise AssertionError(f"{unit} never showed {words}; the screen shows:\n{terminal.screen()}")


def processes_with(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in argv:
                found.append(argv)
    return found


@pytest.mark.slow
def test_the_demo_opens_navigates_helps_and_quits_cleanly_in_a_terminal(terminal: Terminal) -> None:
    terminal.start([sys.executable, "-m", "clustertui.console.app", "--demo"])
    screen = terminal.wait_for("connected", within=60)
    screen = terminal.wait_for("/services/")
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", screen).group(1))  # type: ignore[union-attr]
    assert "/queue/" in screen and "/config/" in screen and "/_coreos.com/" in screen
    # Down to /config/ and open it.
    terminal.keys("Down", "Down", "Down", "Enter")
    screen = terminal.wait_for("app/")
    assert "web/" in screen
    terminal.keys("Down", "Enter")
    terminal.wait_for("database")
    terminal.keys("Down")
    screen = terminal.wait_for('"host": "db.internal"')
    assert "json" in screen and "version 1" in screen
    terminal.keys("?")
    screen = terminal.wait_for("keys.delete")
    # A lone ESC is only a key once the terminal's escape timeout passes; wait, as people do.
    terminal.keys("Escape")
    terminal.wait_gone("keys.delete")
    # The units pane: stop hello.service, start it again, then follow its journal.
    terminal.keys("3")
    terminal.wait_for("⏎ Status")
    wait_for_row(terminal, "hello.service", "launched", "launched", "active")
    terminal.keys("Down")
    time.sleep(0.3)
    terminal.keys("x")
    wait_for_row(terminal, "hello.service", "loaded", "loaded", "inactive")
    terminal.keys("s")
    wait_for_row(terminal, "hello.service", "launched", "launched", "active")
    terminal.keys("j")
    screen = terminal.wait_for("Hello from")
    assert "hello.service on" in screen and "following" in screen
    # The machines pane: a shell on a machine of this host, then back to the console.
    terminal.keys("2")
    terminal.wait_for("o Shell")
    terminal.keys("o")
    terminal.wait_for("exit the shell to return")
    terminal.keys("echo shell-$((6*7)) in $PWD", "Enter")
    screen = terminal.wait_for("shell-42 in ")
    assert "/node" in screen
    # The shell finds the clusterd the console runs (issue 13).
    terminal.keys("echo found-$(command -v clusterd)", "Enter")
    terminal.wait_for("found-/")
    terminal.keys("exit", "Enter")
    terminal.wait_for("o Shell")
    terminal.keys("1", "q")
    terminal.wait_for("EXITED 0", within=60)
    assert not port_open(port), "the demo store outlived the console"
    assert not processes_with(f"--endpoints http://127.0.0.1:{port}"), "demo nodes outlived it"


@pytest.mark.slow
def test_closing_the_terminal_stops_the_demo_store(terminal: Terminal) -> None:
    terminal.start([sys.executable, "-m", "clustertui.console.app", "--demo"])
    screen = terminal.wait_for("connected")
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", screen).group(1))  # type: ignore[union-attr]
    assert port_open(port)
    terminal.kill()
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(port), "the demo store outlived its terminal"


@pytest.mark.slow
def test_closing_the_terminal_removes_the_demos_temporary_directory_and_ps_says_clusterd(
    terminal: Terminal, tmp_path: Path
) -> None:
    """Issue 13: the demo's processes are `clusterd …` in ps; a closed terminal leaves no
    temporary directory behind."""
    terminal.start(
        ["env", f"TMPDIR={tmp_path}", sys.executable, "-m", "clustertui.console.app", "--demo"]
    )
    screen = terminal.wait_for("connected", within=60)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", screen).group(1))  # type: ignore[union-attr]
    assert len(list(tmp_path.glob("clustertui-demo-*"))) == 1
    names = {
        (Path("/proc") / pid / "comm").read_text().strip()
        for pid in _pids_with(f"http://127.0.0.1:{port}")
    }
    assert names == {"clusterd"}, names
    terminal.kill()
    deadline = time.monotonic() + 30
    while list(tmp_path.glob("clustertui-demo-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(tmp_path.glob("clustertui-demo-*")), "the demo's directory outlived it"
    assert not port_open(port)


def _pids_with(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in argv:
                found.append(entry.name)
    return found


def typed(terminal: Terminal, keys: list[str], human: bool) -> None:
    """Keys as a person types them (a pause after each) or all at once."""
    if not human:
        terminal.keys(*keys)
        return
    for key in keys:
        terminal.keys(key)
        time.sleep(0.15)


def lines_of(screen: str) -> list[str]:
    return screen.rstrip("\n").splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(("size", "human"), [((80, 24), True), ((160, 45), False)])
def test_issue_13_in_a_terminal(terminal: Terminal, size: tuple[int, int], human: bool) -> None:
    """Issue 13's problems, driven as a user drives them, at 80x24 typing at human speed
    and at 160x45 typing fast."""
    # The window's own size, not the COLUMNS and LINES the test session sets for snapshots.
    command = [
        "env",
        "-u",
        "COLUMNS",
        "-u",
        "LINES",
        sys.executable,
        "-m",
        "clustertui.console.app",
    ]
    terminal.start([*command, "--demo"], size)
    screen = terminal.wait_for("/services/", within=60)
    screen = terminal.wait_for("connected")
    screen = terminal.wait_for("? Help")
    # 13.4: the header keeps the connection state, the footer keeps ? Help.
    assert lines_of(screen)[0].rstrip().endswith("connected"), lines_of(screen)[0]
    assert "? Help" in lines_of(screen)[-1], screen
    # 13.3: n on /config/ keeps the directory; a quick tab moves on to the value.
    typed(terminal, ["Down", "Down", "Down"], human)
    time.sleep(0.3)
    typed(terminal, ["n", *"newbie1", "Tab", *"v1"], human)
    screen = terminal.wait_for("/config/newbie1")
    terminal.keys("C-s")
    terminal.wait_for("wrote /config/newbie1")
    # 13.6: the watch log opens and closes with w; the keys still answer afterwards.
    typed(terminal, ["w"], human)
    terminal.wait_for("watching /config/")
    typed(terminal, ["Tab", "Tab", "w"], human)
    terminal.wait_gone("watching /config/")
    typed(terminal, ["?"], human)
    terminal.wait_for("keys.delete")
    terminal.keys("Escape")
    terminal.wait_gone("keys.delete")
    # 13.5: ctrl+p opens the palette, here and on Units.
    terminal.keys("C-p")
    terminal.wait_for("Search for commands")
    terminal.keys("Escape")
    terminal.wait_gone("🔎")
    # 13.9: R answers, naming the unit and its machine.
    typed(terminal, ["3"], human)
    terminal.wait_for("Restart")
    wait_for_row(terminal, "hello.service", "launched", "launched", "active")
    typed(terminal, ["Down"], human)
    time.sleep(0.3)
    typed(terminal, ["R"], human)
    terminal.wait_for("restarting hello.service on")
    terminal.wait_for("hello.service restarted on", within=40)
    # 13.8: from Subnets the palette offers no unit command.
    typed(terminal, ["4"], human)
    terminal.wait_for("SUBNET")
    terminal.keys("C-p")
    terminal.wait_for("Search for commands")
    typed(terminal, [*"stop"], human)
    time.sleep(1)
    assert "Units: Stop" not in terminal.screen()
    terminal.keys("Escape")
    terminal.wait_gone("🔎")
    # 13.10: the journal opens on the whole cluster.
    typed(terminal, ["5"], human)
    screen = terminal.wait_for("the whole cluster: 3 machines")
    terminal.wait_for("Hello from")
    # The layout held all along: the state is on the first line.
    assert lines_of(terminal.screen())[0].rstrip().endswith("connected")
    terminal.keys("C-c")
    terminal.wait_for("EXITED 0", within=60)
