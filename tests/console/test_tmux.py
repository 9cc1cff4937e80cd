"""Drives `clustertui --demo` in a real terminal (tmux) the way a person would."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

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

    def start(self, command: list[str]) -> None:
        shell = f"cd {shlex.quote(str(REPO))} && {shlex.join(command)}; echo EXITED $?; sleep 60"
        self.run("new-session", "-d", "-x", "120", "-y", "36", "-s", "main", shell)

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


@pytest.mark.slow
def test_the_demo_opens_navigates_helps_and_quits_cleanly_in_a_terminal(terminal: Terminal) -> None:
    terminal.start([sys.executable, "-m", "console.app", "--demo"])
    screen = terminal.wait_for("connected")
    screen = terminal.wait_for("/services/")
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", screen).group(1))  # type: ignore[union-attr]
    assert "/queue/" in screen and "/config/" in screen
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
    terminal.keys("3")
    terminal.wait_for("Units arrives with the cluster panes")
    terminal.keys("1", "q")
    terminal.wait_for("EXITED 0")
    assert not port_open(port), "the demo store outlived the console"


@pytest.mark.slow
def test_closing_the_terminal_stops_the_demo_store(terminal: Terminal) -> None:
    terminal.start([sys.executable, "-m", "console.app", "--demo"])
    screen = terminal.wait_for("connected")
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", screen).group(1))  # type: ignore[union-attr]
    assert port_open(port)
    terminal.kill()
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(port), "the demo store outlived its terminal"
