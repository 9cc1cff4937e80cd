"""The journal pane over SSH through the tunnel (real sshd): drops, reconnects, stops its reader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.journal.writer import JournalWriter
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.session import Session
from tests.harness.procs import REPO
from tests.harness.sshd import SSHServer
from tests.panes.conftest import SIZE, wait_for

pytestmark = pytest.mark.slow

MACHINE = "f00dfeed" * 4
UNIT = "remote.service"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def readers_of(data_dir: Path) -> list[int]:
    """PIDs of `clusterd journal` processes reading ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = (str(data_dir).encode(), f"--data-dir={data_dir}".encode())
        if b"journal" in argv and any(word in argv for word in wanted):
            found.append(int(entry.name))
    return found


def write(writer: JournalWriter, numbers: range) -> None:
    for number in numbers:
        writer.line(f"line {number}".encode(), unit=UNIT, identifier="sh", pid=1)
    writer.flush()


async def test_journal_follow_over_ssh_reconnects_after_a_drop_with_no_gaps_or_duplicates(
    sshd: SSHServer, fresh_etcd, tmp_path: Path
) -> None:
    data_dir = tmp_path / "machine"
    writer = JournalWriter(data_dir, hostname="remote-box", machine_id=MACHINE)
    write(writer, range(20))
    client = make_client([fresh_etcd.url])
    record = {"ID": MACHINE, "PublicIP": "127.0.0.1", "Hostname": "remote-box",
              "DataDir": str(data_dir)}  # fmt: skip
    await client.put(f"/_coreos.com/fleet/machines/{MACHINE}/object".encode(),
                     json.dumps(record).encode())  # fmt: skip
    settings = ClusterSettings(
        name="ssh",
        endpoints=(fresh_etcd.url,),
        tunnel=sshd.spec,
        identity=str(sshd.client_key),
        known_hosts_file=str(sshd.known_hosts),
    )
    session = Session(settings)
    await session.open_tunnel()
    remote = f"cd {REPO} && PYTHONPATH={REPO} {sys.executable} -m clustertui.backend.daemon"
    app = ClusterConsole(session, remote_clusterd=remote)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: MACHINE in app.model.fleet.machines)
            await pilot.press("2")
            await wait_for(pilot, lambda: app.machines_pane.table.cursor_row is not None)
            await pilot.press("j")
            view = app.journal_pane.view
            await wait_for(pilot, lambda: len(view.entries) == 20, within=20)
            follower = app.journal_pane.followers[0]
            shown: list[str] = []
            follower.on_state = lambda f, state: (
                shown.append(state),
                app.journal_pane._state(f, state),
            )
            # Drop every SSH session: the tunnel's and the journal reader's.
            for pid in children_of(sshd.child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            await wait_for(pilot, lambda: follower.reconnects >= 1, within=20)
            assert "connection lost" in str(app.journal_pane.query_one(".pane-status").render())
            write(writer, range(20, 50))
            await wait_for(pilot, lambda: len(view.entries) >= 50, within=30)
            await pilot.pause(0.5)
            assert [e.message for e in view.buffered] == [f"line {n}" for n in range(50)]
            assert {e.unit for e in view.buffered} == {UNIT}
            assert shown[0] == "reconnecting" and shown[-1] == "following"
            await wait_for(pilot, lambda: len(readers_of(data_dir)) == 1, within=10)
            app.journal_pane.stop()
            # The PTY hangs the remote reader up when the pane lets go of it.
            await wait_for(pilot, lambda: not readers_of(data_dir), within=10)
    finally:
        writer.close()
        await client.close()
        await session.close()
