"""Tests for unit supervision with real child processes: exec lines, restarts, stopping."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clustertui.backend.fleet.runner import UnitRunner, group_alive, reap_orphans
from clustertui.backend.fleet.unitfile import parse
from tests.fleet.conftest import RecordingSink, eventually


def runner(text: str, sink: RecordingSink, tmp_path: Path, name: str = "t.service") -> UnitRunner:
    return UnitRunner(name, parse(text, name), sink=sink, run_dir=tmp_path / "run")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_output_lines_reach_the_journal_tagged_with_the_unit(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = runner(
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo one; echo two >&2; printf three'\n",
        sink,
        tmp_path,
        "echo.service",
    )
    unit.start()
    await unit.wait_stopped()
    assert sorted(unit_lines(sink, "echo.service")) == [
        ("stderr", "two"),
        ("stdout", "one"),
        ("stdout", "three"),
    ]
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


def unit_lines(sink: RecordingSink, unit: str) -> list[tuple[str, str]]:
    return [
        (stream, m.decode()) for u, stream, m in sink.lines if u == unit and stream != "journal"
    ]


async def test_a_simple_unit_runs_until_stopped_and_reports_each_state(
    sink: RecordingSink, tmp_path: Path
) -> None:
    seen: list[tuple[str, str]] = []
    unit = runner("[Service]\nExecStart=/bin/sleep 30\n", sink, tmp_path)
    unit.on_change = lambda r: seen.append((r.active_state, r.sub_state))
    unit.start()
    await eventually(lambda: unit.active_state == "active", what="running")
    pid = unit.main_pid
    assert alive(pid)
    await unit.stop()
    assert not alive(pid)
    assert seen == [
        ("activating", "start"),
        ("active", "running"),
        ("deactivating", "stop-sigterm"),
        ("inactive", "dead"),
    ]


async def test_the_service_managers_lines_say_starting_started_stopping_stopped_and_why_it_failed(
    sink: RecordingSink, tmp_path: Path
) -> None:
    long = runner(
        "[Unit]\nDescription=A long one\n[Service]\nExecStart=/bin/sleep 30\n",
        sink,
        tmp_path,
        "long.service",
    )
    long.start()
    await eventually(lambda: long.active_state == "active", what="running")
    await long.stop()
    assert sink.system("long.service") == [
        "Starting long.service - A long one...",
        "Started long.service - A long one.",
        "Stopping long.service - A long one...",
        "Stopped long.service - A long one.",
    ]
    failing = runner("[Service]\nExecStart=/bin/sh -c 'exit 3'\n", sink, tmp_path, "bad.service")
    failing.start()
    await failing.wait_stopped()
    assert sink.system("bad.service") == [
        "Starting bad.service...",
        "Started bad.service.",
        "bad.service: Failed with result 'exit-code'.",
    ]
    once = runner("[Service]\nType=oneshot\nExecStart=/bin/true\n", sink, tmp_path, "once.service")
    once.start()
    await once.wait_stopped()
    assert sink.system("once.service") == [
        "Starting once.service...",
        "once.service: Deactivated successfully.",
        "Finished once.service.",
    ]


async def test_pre_post_and_stop_commands_run_in_order_with_environment(
    sink: RecordingSink, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE='file value'\nGREETING=overridden\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    log = tmp_path / "log"
    text = f"""[Service]
Environment=GREETING=hello "SPACED=a b"
EnvironmentFile={env_file}
EnvironmentFile=-{tmp_path}/missing
WorkingDirectory={workdir}
ExecStartPre=-/bin/false
ExecStartPre=/bin/sh -c 'echo pre $GREETING >> {log}'
ExecStart=/bin/sh -c 'echo "main $FROM_FILE|$SPACED|$(pwd)" >> {log}; exec sleep 30'
ExecStartPost=/bin/sh -c 'echo post >> {log}'
ExecStop=/bin/sh -c 'echo stop $MAINPID >> {log}'
ExecStopPost=/bin/sh -c 'echo stoppost >> {log}'
"""
    unit = runner(text, sink, tmp_path)
    unit.start()
    await eventually(
        lambda: log.exists() and len(log.read_text().splitlines()) == 3, what="main and post"
    )
    pid = unit.main_pid
    await unit.stop()
    lines = log.read_text().splitlines()
    assert lines[0] == "pre overridden"
    # ExecStartPost runs beside the main process, as in systemd: either may write first.
    assert sorted(lines[1:3]) == sorted([f"main file value|a b|{workdir}", "post"])
    assert lines[3] == f"stop {pid}"
    assert lines[4] == "stoppost"


async def test_a_failing_pre_command_fails_the_unit(sink: RecordingSink, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    unit = runner(
        f"[Service]\nExecStartPre=/bin/false\nExecStart=/bin/touch {marker}\n", sink, tmp_path
    )
    unit.start()
    await unit.wait_stopped()
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")
    assert not marker.exists()


async def test_restart_on_failure_restarts_until_the_command_succeeds(
    sink: RecordingSink, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    script = (
        f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ "$n" -ge 3 ]'
    )
    unit = runner(
        f"[Service]\nRestart=on-failure\nRestartSec=50ms\nExecStart=/bin/sh -c '{script}'\n",
        sink,
        tmp_path,
    )
    unit.start()
    await unit.wait_stopped()
    assert counter.read_text().strip() == "3"
    assert unit.restarts == 2
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


async def test_restart_no_leaves_a_failed_unit_failed(sink: RecordingSink, tmp_path: Path) -> None:
    unit = runner("[Service]\nExecStart=/bin/sh -c 'exit 3'\n", sink, tmp_path)
    unit.start()
    await unit.wait_stopped()
    assert unit.restarts == 0
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")
    assert unit.last_outcome is not None and unit.last_outcome.status == 3


async def test_on_abnormal_restarts_after_a_crash_signal_but_not_after_an_error_exit(
    sink: RecordingSink, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        '[ "$n" -ge 2 ] && exit 4; kill -SEGV $$$$'
    )
    unit = runner(
        f"[Service]\nRestart=on-abnormal\nRestartSec=50ms\nExecStart=/bin/sh -c '{script}'\n",
        sink,
        tmp_path,
    )
    unit.start()
    await unit.wait_stopped()
    assert counter.read_text().strip() == "2"
    assert (unit.active_state, unit.sub_state) == ("failed", "failed")


async def test_restart_always_restarts_with_growing_backoff_until_stopped(
    sink: RecordingSink, tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps"
    unit = runner(
        "[Service]\nRestart=always\nRestartSec=100ms\n"
        f"ExecStart=/bin/sh -c 'date +%%s.%%N >> {stamps}'\n",
        sink,
        tmp_path,
    )
    unit.start()
    await eventually(
        lambda: stamps.exists() and len(stamps.read_text().split()) >= 4, what="4 runs"
    )
    await unit.stop()
    times = [float(t) for t in stamps.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The delays are 0.1, 0.2, 0.4 s. Lower bounds hold however loaded the machine is;
    # a ratio between gaps does not, since start-up time adds to each gap unevenly.
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.18
    assert gaps[2] >= 0.36
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


async def test_a_stop_timeout_kills_the_whole_process_group(
    sink: RecordingSink, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # The main process and its child both ignore SIGTERM; only SIGKILL ends them.
    script = (
        "trap '' TERM; (trap '' TERM; sleep 60 & echo $! >> PIDS; wait) & echo $! >> PIDS; "
        "echo $$$$ >> PIDS; while true; do sleep 1; done"
    ).replace("PIDS", str(pids))
    unit = runner(f'[Service]\nTimeoutStopSec=1\nExecStart=/bin/sh -c "{script}"\n', sink, tmp_path)
    unit.start()
    await eventually(lambda: pids.exists() and len(pids.read_text().split()) == 3, what="pids")
    group = [int(p) for p in pids.read_text().split()]
    assert all(alive(p) for p in group)
    began = time.monotonic()
    await unit.stop()
    elapsed = time.monotonic() - began
    assert 0.9 <= elapsed < 5
    assert not any(alive(p) for p in group)


async def test_kill_signal_is_sent_to_the_group(sink: RecordingSink, tmp_path: Path) -> None:
    got = tmp_path / "got"
    trapping = tmp_path / "trapping"
    unit = runner(
        f"[Service]\nKillSignal=SIGINT\nExecStart=/bin/sh -c \"trap 'echo INT > {got}; exit 0' "
        f'INT; : > {trapping}; while true; do sleep 0.1; done"\n',
        sink,
        tmp_path,
    )
    unit.start()
    await eventually(lambda: unit.active_state == "active", what="running")
    # Active means started (Type=simple), not that the shell has set its trap yet: a signal
    # before the trap ends the shell by default (a busy CI machine once saw it do so).
    await eventually(trapping.exists, what="the trap set")
    await unit.stop()
    assert got.read_text().strip() == "INT"


async def test_kill_mode_process_leaves_the_rest_of_the_group(
    sink: RecordingSink, tmp_path: Path
) -> None:
    child_pid = tmp_path / "child"
    unit = runner(
        "[Service]\nKillMode=process\n"
        f"ExecStart=/bin/sh -c 'sleep 60 & echo $! > {child_pid}; wait'\n",
        sink,
        tmp_path,
    )
    unit.start()
    await eventually(lambda: child_pid.exists() and child_pid.read_text().strip(), what="child")
    child = int(child_pid.read_text())
    try:
        await unit.stop()
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


async def test_oneshot_with_remain_after_exit_stays_active_until_stopped(
    sink: RecordingSink, tmp_path: Path
) -> None:
    stopped = tmp_path / "stopped"
    unit = runner(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
        f"ExecStop=/bin/touch {stopped}\n",
        sink,
        tmp_path,
    )
    unit.start()
    await eventually(lambda: unit.sub_state == "exited", what="exited")
    assert unit.active_state == "active"
    await unit.stop()
    assert stopped.exists()
    assert (unit.active_state, unit.sub_state) == ("inactive", "dead")


async def test_a_missing_executable_fails_the_unit_and_says_so(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = runner("[Service]\nExecStart=/no/such/binary\n", sink, tmp_path, "gone.service")
    unit.start()
    await unit.wait_stopped()
    assert unit.active_state == "failed"
    assert any("/no/such/binary" in m for m in sink.messages("gone.service"))


def test_orphans_of_a_previous_agent_are_stopped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    orphan = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
    try:
        stat = Path(f"/proc/{orphan.pid}/stat").read_text().rpartition(")")[2].split()
        record = {"pid": orphan.pid, "pgid": orphan.pid, "start_time": stat[19]}
        (run_dir / "lost.service.json").write_text(json.dumps(record))
        assert reap_orphans(run_dir) == ["lost.service"]
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert not (run_dir / "lost.service.json").exists()
        assert not group_alive(orphan.pid)
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bystander = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
    try:
        record = {"pid": bystander.pid, "pgid": 999999, "start_time": "1"}
        (run_dir / "old.service.json").write_text(json.dumps(record))
        assert reap_orphans(run_dir) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="User= takes effect only when the agent is root")
async def test_user_runs_the_unit_as_that_account(sink: RecordingSink, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    unit = runner(
        "[Service]\nType=oneshot\nUser=nobody\nExecStart=/bin/sh -c 'echo $(id -u) $HOME'\n",
        sink,
        tmp_path,
        "who.service",
    )
    unit.start()
    await unit.wait_stopped()
    assert sink.messages("who.service") == [f"{nobody.pw_uid} {nobody.pw_dir}"]


async def test_an_unknown_user_fails_the_unit_or_is_ignored_when_not_root(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = runner(
        "[Service]\nUser=no-such-user-here\nExecStart=/bin/true\n", sink, tmp_path, "u.service"
    )
    unit.start()
    await unit.wait_stopped()
    if os.geteuid() == 0:
        assert unit.active_state == "failed"
        assert "User=no-such-user-here: no such user" in sink.messages("u.service")
    else:
        assert unit.active_state == "inactive"
        assert "User=no-such-user-here ignored" in sink.messages("u.service")[0]


async def test_a_start_command_past_timeout_start_sec_is_killed_and_fails_the_unit(
    sink: RecordingSink, tmp_path: Path
) -> None:
    unit = runner(
        "[Service]\nTimeoutStartSec=300ms\nExecStartPre=/bin/sleep 30\nExecStart=/bin/sleep 30\n",
        sink,
        tmp_path,
        "slow.service",
    )
    began = time.monotonic()
    unit.start()
    await unit.wait_stopped()
    assert time.monotonic() - began < 5
    assert unit.active_state == "failed"
    assert "/bin/sleep 30: timed out after 0.3s" in sink.messages("slow.service")


@pytest.mark.parametrize("call", ["stop", "wait_stopped"])
async def test_a_caller_cancelled_while_a_unit_stops_is_cancelled_and_the_stop_goes_on(
    sink: RecordingSink, tmp_path: Path, call: str
) -> None:
    """The agent's reconcile loop is cancelled when its session ends, maybe while it waits for
    a unit to stop. The cancel must reach the loop (before, it was swallowed: the loop ran on,
    the session never ended and the agent never registered again, as a chaos soak showed),
    and the unit must still finish stopping, not have its supervisor cancelled half-way."""
    unit = runner("[Service]\nExecStart=/bin/sleep 30\nExecStop=/bin/sleep 1\n", sink, tmp_path)
    unit.start()
    await eventually(lambda: unit.active_state == "active", what="running")
    pid = unit.main_pid
    if call == "wait_stopped":
        stopping = asyncio.create_task(unit.stop())
        await asyncio.sleep(0.2)
        waiter = asyncio.create_task(unit.wait_stopped())
    else:
        waiter = asyncio.create_task(unit.stop())
    await asyncio.sleep(0.2)  # inside ExecStop's second
    waiter.cancel()
    done, _ = await asyncio.wait({waiter}, timeout=0.5)
    assert done, "the cancelled caller went on waiting for the unit"
    assert waiter.cancelled()
    await eventually(lambda: not alive(pid), within=10, what="the unit stopped all the same")
    await eventually(lambda: unit.active_state == "inactive", within=10, what="inactive")
    if call == "wait_stopped":
        await stopping
