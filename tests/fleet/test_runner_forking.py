"""Type=forking units: the start command detaches a daemon and exits; PIDFile= names it.

The daemons here really detach: `setsid` puts them in a session and process group of their own,
out of the starter's group, as a classic daemon does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clustertui.backend.fleet.runner import UnitRunner
from clustertui.backend.fleet.unitfile import UnitFileError, parse
from tests.fleet.conftest import RecordingSink, eventually


def _runner(text: str, sink: RecordingSink, tmp_path: Path) -> UnitRunner:
    return UnitRunner("f.service", parse(text, "f.service"), sink=sink, run_dir=tmp_path / "run")


def _notes(sink: RecordingSink) -> list[str]:
    return [m.decode() for u, _stream, m in sink.lines if u == "f.service"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _daemon(pid_file: Path, extra: str = "") -> str:
    """A unit whose starter detaches `sleep 30` into its own session and writes its PID."""
    return (
        f"[Service]\nType=forking\nPIDFile={pid_file}\n{extra}"
        f"ExecStart=/bin/sh -c 'setsid sleep 30 </dev/null >/dev/null 2>&1 & "
        f"echo $! > {pid_file}'\n"
    )


async def test_a_forking_unit_runs_the_daemon_its_pid_file_names_until_stopped(
    sink: RecordingSink, tmp_path: Path
) -> None:
    pid_file = tmp_path / "d.pid"
    stopped = tmp_path / "stopped"
    stop = f"ExecStop=/bin/sh -c 'echo $MAINPID > {stopped}'\n"
    unit = _runner(_daemon(pid_file, stop), sink, tmp_path)
    unit.start()
    await eventually(lambda: unit.active_state == "active", what="running")
    daemon = int(pid_file.read_text())
    assert unit.main_pid == daemon
    assert os.getpgid(daemon) != os.getpgid(os.getpid())  # it really left our group
    await unit.stop()
    assert not _alive(daemon)
    assert stopped.read_text().strip() == str(daemon)
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


async def test_a_forking_daemon_that_dies_on_its_own_fails_the_unit_and_restarts_it(
    sink: RecordingSink, tmp_path: Path
) -> None:
    pid_file = tmp_path / "d.pid"
    unit = _runner(_daemon(pid_file, "Restart=on-failure\nRestartSec=0.1\n"), sink, tmp_path)
    unit.start()
    await eventually(lambda: unit.active_state == "active", what="running")
    first = unit.main_pid
    os.kill(first, 9)
    await eventually(lambda: unit.restarts == 1 and unit.active_state == "active", what="restart")
    assert unit.main_pid not in (0, first)
    assert any("exited (its status is unknown" in note for note in _notes(sink))
    await unit.stop()


async def test_a_starter_that_leaves_no_pid_file_fails_the_unit(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = _runner(
        f"[Service]\nType=forking\nPIDFile={tmp_path / 'never.pid'}\nTimeoutStartSec=1\n"
        "ExecStart=/bin/true\n",
        sink,
        tmp_path,
    )
    unit.start()
    await unit.wait_stopped()
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")
    assert unit.last_outcome is not None and unit.last_outcome.result == "protocol"
    assert any("names no running process" in note for note in _notes(sink))


async def test_a_failing_starter_fails_the_unit_with_its_status(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = _runner(
        f"[Service]\nType=forking\nPIDFile={tmp_path / 'd.pid'}\nExecStart=/bin/sh -c 'exit 3'\n",
        sink,
        tmp_path,
    )
    unit.start()
    await unit.wait_stopped()
    assert unit.last_outcome is not None
    assert (unit.last_outcome.result, unit.last_outcome.status) == ("exit-code", 3)


def test_type_forking_without_a_pid_file_is_refused_with_the_reason() -> None:
    with pytest.raises(UnitFileError) as refused:
        parse("[Service]\nType=forking\nExecStart=/usr/sbin/daemon\n", "f.service")
    assert (refused.value.line, "needs PIDFile=" in refused.value.reason) == (2, True)
