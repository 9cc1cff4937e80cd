"""The chaos world's own machinery: a killed etcd member comes back though its port was taken."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.chaos.world import World, port_free, restart_member
from tests.harness.etcd import start_etcd, start_etcd_cluster


def hold(port: int) -> socket.socket:
    """Take ``port`` (listening: nothing else can bind it, whatever its options)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_killed_member_restarts_once_its_port_is_free_again(tmp_path: Path) -> None:
    """Something holds the dead member's client port for a moment (as a client's TCP
    self-connect to that port does): the restart waits for it, and does not crash the run."""
    member = start_etcd(tmp_path)
    try:
        member.kill()
        holder = hold(member.client_port)
        assert not port_free(member.client_port)
        release = threading.Timer(1.5, holder.close)
        release.start()
        try:
            restart_member(member, f"{member.name}={member.peer_url}", within=20)
        finally:
            release.cancel()
            holder.close()
        assert member.healthy()
    finally:
        member.stop()


def test_a_restart_gives_up_after_its_bound(tmp_path: Path) -> None:
    member = start_etcd(tmp_path)
    try:
        member.kill()
        with hold(member.client_port):
            try:
                restart_member(member, f"{member.name}={member.peer_url}", within=1)
            except TimeoutError as error:
                assert "still taken" in str(error)
            else:
                raise AssertionError("restarted on a taken port")
    finally:
        member.stop()


def test_a_second_heal_of_the_same_member_starts_nothing(tmp_path: Path) -> None:
    """Two overlapping faults that killed the same member heal twice: the second heal must
    not start a second etcd on the ports the first one holds (and lose track of the first)."""
    member = start_etcd(tmp_path)
    try:
        member.kill()
        initial = f"{member.name}={member.peer_url}"
        restart_member(member, initial, within=20)
        assert member.child is not None
        first = member.child.pid
        restart_member(member, initial, within=5)
        assert member.child.pid == first and member.child.alive() and member.healthy()
    finally:
        member.stop()


@pytest.mark.slow
def test_the_leader_kill_kills_the_leader_and_never_a_second_member(tmp_path: Path) -> None:
    """Overlapping leader kills: the first kills the member that leads; the second, while
    that one is down, kills nothing (it used to kill member 0, whether dead or alive, and
    both heals then started the same member twice)."""
    world = World(tmp_path, "etcd", 1)
    world.cluster = start_etcd_cluster(tmp_path / "etcd", 3)
    try:
        leader = world._etcd_leader()
        assert leader is not None
        first_heal = world.kill_etcd_leader()
        assert world.report.faults[-1] == f"SIGKILL etcd leader m{leader}"
        assert not world.cluster.members[leader].child.alive()  # type: ignore[union-attr]
        second_heal = world.kill_etcd_leader()
        assert world.report.faults[-1] == f"SIGKILL etcd leader: skipped, m{leader} is down"
        alive = [m.name for m in world.cluster.members if m.child and m.child.alive()]
        assert len(alive) == 2, alive
        second_heal()
        first_heal()
        for member in world.cluster.members:
            assert member.child is not None and member.child.alive()
            member.wait_ready(30)
    finally:
        world.cluster.stop()
