"""Type=notify units: active only once they say READY=1 on $NOTIFY_SOCKET, as under systemd.

The real `systemd-notify` speaks to the runner's socket; a stranger that learns the socket's
name is not heard.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from clustertui.backend.fleet.runner import UnitRunner
from clustertui.backend.fleet.unitfile import parse
from tests.fleet.conftest import RecordingSink, eventually
from tests.harness.procs import find_tool

SYSTEMD_NOTIFY = find_tool("systemd-notify")


def _runner(text: str, sink: RecordingSink, tmp_path: Path) -> UnitRunner:
    return UnitRunner("n.service", parse(text, "n.service"), sink=sink, run_dir=tmp_path / "run")


def _notes(sink: RecordingSink) -> list[str]:
    return [m.decode() for u, _stream, m in sink.lines if u == "n.service"]


async def test_a_notify_unit_is_active_only_once_it_says_ready(
    sink: RecordingSink, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    unit = _runner(
        "[Service]\nType=notify\n"
        f"ExecStart=/bin/sh -c 'while [ ! -e {go} ]; do sleep 0.05; done; "
        f'{SYSTEMD_NOTIFY} --ready --status="serving 3 clients"; exec sleep 30\'\n',
        sink,
        tmp_path,
    )
    seen: list[tuple[str, str]] = []
    unit.on_change = lambda r: seen.append((r.active_state, r.sub_state))
    unit.start()
    await eventually(lambda: unit.main_pid != 0, what="started")
    await asyncio.sleep(0.5)
    assert (unit.active_state, unit.sub_state) == ("activating", "start")
    go.touch()
    await eventually(lambda: unit.active_state == "active", what="ready")
    assert unit.sub_state == "running"
    assert unit.status_text == "serving 3 clients"
    await unit.stop()
    changes = [state for i, state in enumerate(seen) if i == 0 or state != seen[i - 1]]
    assert changes[:2] == [("activating", "start"), ("active", "running")]  # STATUS= reports too
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


async def test_a_notify_unit_silent_past_its_start_timeout_is_killed_and_failed(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = _runner(
        "[Service]\nType=notify\nTimeoutStartSec=1\nExecStart=/bin/sleep 30\n", sink, tmp_path
    )
    unit.start()
    await eventually(lambda: unit.main_pid != 0, what="started")
    pid = unit.main_pid
    await unit.wait_stopped()
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")
    assert unit.last_outcome is not None and unit.last_outcome.result == "timeout"
    assert any("timed out after 1s without READY=1" in note for note in _notes(sink))
    assert not Path(f"/proc/{pid}").exists()


async def test_a_notify_unit_that_exits_before_ready_fails(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = _runner("[Service]\nType=notify\nExecStart=/bin/true\n", sink, tmp_path)
    unit.start()
    await unit.wait_stopped()
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")
    assert unit.last_outcome is not None and unit.last_outcome.result == "protocol"
    assert any("before READY=1" in note for note in _notes(sink))


async def test_a_stranger_that_knows_the_socket_cannot_make_a_unit_ready(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = _runner("[Service]\nType=notify\nExecStart=/bin/sleep 30\n", sink, tmp_path)
    unit.start()
    await eventually(lambda: unit.main_pid != 0, what="started")
    environ = Path(f"/proc/{unit.main_pid}/environ").read_bytes().split(b"\0")
    (address,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"NOTIFY_SOCKET=")]
    assert address.startswith(b"@")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"READY=1", b"\0" + address[1:])  # from the test: alive, not the unit's
    await asyncio.sleep(0.5)
    assert (unit.active_state, unit.sub_state) == ("activating", "start")
    await unit.stop()
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")
