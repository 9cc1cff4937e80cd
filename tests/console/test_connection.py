"""Tests of the console's connection: tunnels through a real sshd, drops, restarts, compaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncssh
import pytest

from clustertui.backend.etcd import make_client
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.session import Session
from clustertui.console.tunnel import HostKeyUntrusted, TunnelError, TunnelSpec, open_tunnel
from tests.console.conftest import SIZE, console_for, loaded, pane, seed, tree, wait_for
from tests.harness.etcd import EtcdMember, TLSFiles, start_etcd
from tests.harness.pki import CA
from tests.harness.sshd import SSHServer, start_sshd
from tests.harness.stores import RunningStore


def tunnelled(sshd: SSHServer, url: str, **changes: object) -> ClusterSettings:
    return ClusterSettings(
        name="remote",
        endpoints=(url,),
        tunnel=sshd.spec,
        identity=str(sshd.client_key),
        known_hosts_file=str(sshd.known_hosts),
        **changes,  # type: ignore[arg-type]
    )


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def drop_connections(server: SSHServer, stop_listening: bool = False) -> int:
    """Kill sshd's per-connection processes: every tunnel through it drops at once.

    With ``stop_listening`` the daemon itself stops first, so nothing can reconnect.
    """
    assert server.child is not None
    children = _children()
    doomed: list[int] = []
    stack = list(children.get(server.child.pid, []))
    while stack:
        pid = stack.pop()
        doomed.append(pid)
        stack.extend(children.get(pid, []))
    if stop_listening:
        server.child.stop()
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(doomed)


def test_tunnel_specs_parse_like_fleetctl() -> None:
    assert TunnelSpec.parse("10.2.1.1") == TunnelSpec("10.2.1.1")
    assert TunnelSpec.parse("core@10.2.1.1:2222") == TunnelSpec("10.2.1.1", 2222, "core")
    assert TunnelSpec.parse("[::1]:22") == TunnelSpec("::1", 22)
    with pytest.raises(TunnelError, match="not a port"):
        TunnelSpec.parse("host:ssh")


async def test_the_console_reaches_the_store_through_a_real_sshd_tunnel(
    sshd: SSHServer, store: RunningStore, kv, ns: bytes
) -> None:
    await seed(kv, ns)
    session = Session(tunnelled(sshd, store.url))
    await session.open_tunnel()
    assert session.endpoints != [store.url]
    app = ClusterConsole(session, cluster_name="remote", root=ns.decode())
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert [c.name for c in tree(app).children_of(ns)] == ["config/", "queue/", "top"]
            header = app.cluster_header
            # The tunnel's port shows too (issue 13).
            assert header.via == f"{sshd.user}@127.0.0.1:{sshd.port}"
            await wait_for(pilot, lambda: header.state == "connected" and header.revision > 0)
            assert "via" in header.render().plain
    finally:
        await session.close()


async def test_an_unknown_host_key_is_refused_with_its_fingerprint(
    sshd: SSHServer, tmp_path: Path, etcd: EtcdMember
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    fingerprint = asyncssh.import_public_key(sshd.host_key_pub.read_text()).get_fingerprint()
    with pytest.raises(HostKeyUntrusted) as refused:
        await open_tunnel(
            sshd.spec, [etcd.url], identity=str(sshd.client_key), known_hosts=str(empty)
        )
    message = str(refused.value)
    assert fingerprint in message and "ssh-keyscan" in message
    assert "--strict-host-key-checking=false" in message
    tunnel = await open_tunnel(
        sshd.spec, [etcd.url], identity=str(sshd.client_key), known_hosts=str(empty), strict=False
    )
    try:
        result = await tunnel.run("echo through")
        assert result.stdout.strip() == "through"
    finally:
        await tunnel.close()


@pytest.mark.slow
async def test_a_dropped_tunnel_reconnects_and_the_watch_misses_nothing(
    tmp_path: Path, store: RunningStore, kv, ns: bytes
) -> None:
    await seed(kv, ns)
    server = start_sshd(tmp_path / "sshd")
    session = Session(tunnelled(server, store.url))
    await session.open_tunnel()
    app = ClusterConsole(session, root=ns.decode())
    states: list[str] = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            header = app.cluster_header
            app.watch(header, "state", lambda state: states.append(state), init=False)
            assert drop_connections(server) >= 1
            # Written straight to the store while the console's tunnel is down.
            for number in range(20):
                await kv.put(ns + f"during/{number:02d}".encode(), b"x")
            await wait_for(
                pilot, lambda: any(s.startswith("reconnecting (attempt") for s in states)
            )
            key_tree = tree(app)
            await wait_for(pilot, lambda: key_tree.shown(ns + b"during/"), 20)
            await wait_for(pilot, lambda: header.state == "connected", 20)

            def during() -> int:
                counts = {child.name: child.count for child in key_tree.children_of(ns)}
                return counts.get("during/", 0)

            # The missed events come back in the store's replay chunks, not all at once.
            await wait_for(pilot, lambda: during() == 20, 20)
            await pilot.pause(0.3)
            assert during() == 20
            await pilot.press("down")
            assert session.tunnel is not None and session.tunnel.state == "connected"
    finally:
        await session.close()
        server.stop()


@pytest.mark.slow
async def test_compaction_while_disconnected_reloads_the_tree_and_says_so(
    tmp_path: Path, fresh_etcd: EtcdMember
) -> None:
    kv = make_client([fresh_etcd.url])
    await kv.wait_ready()
    ns = b"/c/"
    await seed(kv, ns)
    server = start_sshd(tmp_path / "sshd")
    session = Session(tunnelled(server, fresh_etcd.url))
    await session.open_tunnel()
    app = ClusterConsole(session, root=ns.decode())
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert server.child is not None
            assert drop_connections(server, stop_listening=True) >= 1
            await wait_for(pilot, lambda: app.cluster_header.state.startswith("reconnecting"))
            await kv.delete(ns + b"top")
            await kv.put(ns + b"later", b"x")
            revision = await kv.current_revision()
            await kv.compact(revision)
            server.child.start()
            key_tree = tree(app)
            await wait_for(pilot, lambda: key_tree.shown(ns + b"later"), 20)
            assert not key_tree.shown(ns + b"top")
            messages = [n.message for n in app._notifications]
            assert any("compacted" in m and "reloaded" in m for m in messages)
    finally:
        await session.close()
        server.stop()
        await kv.close()


@pytest.mark.slow
async def test_a_store_restart_shows_reconnecting_then_resumes(fresh_etcd: EtcdMember) -> None:
    kv = make_client([fresh_etcd.url])
    await kv.wait_ready()
    await seed(kv, b"/r/")
    app = console_for(fresh_etcd.url, b"/r/")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        header = app.cluster_header
        await wait_for(pilot, lambda: header.state == "connected")
        await asyncio.to_thread(fresh_etcd.stop)
        await wait_for(pilot, lambda: header.state.startswith("reconnecting (attempt"))
        await pilot.press("down", "up")
        assert pane(app).key_tree.cursor_child is not None
        await asyncio.to_thread(lambda: fresh_etcd.start().wait_ready())
        await kv.wait_ready()
        await kv.put(b"/r/after-restart", b"x")
        await wait_for(pilot, lambda: tree(app).shown(b"/r/after-restart"), 20)
        await wait_for(pilot, lambda: header.state == "connected", 20)
    await kv.close()


@pytest.mark.slow
async def test_the_console_speaks_mutual_tls_to_the_store_through_the_tunnel(
    sshd: SSHServer, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("etcd-server", server=True)
    member = start_etcd(tmp_path, tls=TLSFiles(server.cert, server.key, ca.path, True))
    operator = ca.issue("operator", server=False)
    endpoint = member.url.replace("127.0.0.1", "localhost")
    settings = tunnelled(
        sshd, endpoint, cacert=str(ca.path), cert=str(operator.cert), key=str(operator.key)
    )
    session = Session(settings)
    try:
        await session.open_tunnel()
        assert session.endpoints[0].startswith("https://127.0.0.1:")
        await session.client.put(b"/tls/secret", b"over ssh and tls")
        app = ClusterConsole(session, root="/tls/")
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert [child.name for child in tree(app).children_of(b"/tls/")] == ["secret"]
            await wait_for(pilot, lambda: app.cluster_header.state == "connected")
    finally:
        await session.close()
        member.stop()


async def test_a_host_alias_from_ssh_config_is_honoured(
    sshd: SSHServer, etcd: EtcdMember, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "Host cluster-gateway\n"
        f"  HostName {sshd.host}\n"
        f"  Port {sshd.port}\n"
        f"  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
        f"  UserKnownHostsFile {sshd.known_hosts}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    tunnel = await open_tunnel("cluster-gateway", [etcd.url])
    try:
        client = make_client(tunnel.endpoints)
        await client.put(b"/alias/k", b"through the alias")
        assert (await client.get(b"/alias/k")).value == b"through the alias"
        await client.close()
    finally:
        await tunnel.close()
