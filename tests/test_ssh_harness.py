"""A real OpenSSH sshd on loopback carries a store connection, and refuses strangers' host keys."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from clustertui.backend.etcd import make_client
from tests.harness.etcd import EtcdMember
from tests.harness.sshd import SSHServer, keygen, start_asyncssh_server


def _connect(server: SSHServer, known_hosts: Path | None = None) -> asyncssh.SSHClientConnection:
    """Connect with the harness's client key only: no agent, no ~/.ssh/config."""
    return asyncssh.connect(
        server.host,
        server.port,
        username=server.user,
        client_keys=[str(server.client_key)],
        known_hosts=str(known_hosts or server.known_hosts),
        agent_path=None,
        config=None,
    )


async def test_a_local_port_forwarded_through_real_sshd_reaches_real_etcd(
    sshd: SSHServer, etcd: EtcdMember
) -> None:
    async with _connect(sshd) as connection:
        listener = await connection.forward_local_port(
            "127.0.0.1", 0, "127.0.0.1", etcd.client_port
        )
        client = make_client(f"http://127.0.0.1:{listener.get_port()}")
        await client.put(b"/ssh/through", b"the tunnel")
        direct = make_client(etcd.url)
        got = await direct.get(b"/ssh/through")
        assert got is not None and got.value == b"the tunnel"
        await client.close()
        await direct.close()
        listener.close()


async def test_an_unknown_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    impostor = keygen(tmp_path / "impostor", "impostor")
    public = Path(f"{impostor}.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {public[0]} {public[1]}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await _connect(sshd, known_hosts)


async def test_the_in_process_ssh_server_forwards_to_etcd_too(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    acceptor, server = await start_asyncssh_server(tmp_path)
    try:
        async with _connect(server) as connection:
            listener = await connection.forward_local_port(
                "127.0.0.1", 0, "127.0.0.1", etcd.client_port
            )
            client = make_client(f"http://127.0.0.1:{listener.get_port()}")
            assert await client.current_revision() >= 1
            await client.close()
            listener.close()
    finally:
        acceptor.close()
